#!/bin/sh
# Runs inside the cached trixie root (chroot): builds the kernel's mtty sample driver (VFIO
# migration v2 with PRE_COPY) and mdpy (an mdev without migration) for the guest kernel $1, and
# collects the VFIO modules they need, decompressed, in /opt/xe-mtty. Idempotent: what is
# already there is kept (the linux-source .deb is deleted once the two sources are out).
set -eu
K=$1
MM=$(echo "$K" | cut -d. -f1,2)
export DEBIAN_FRONTEND=noninteractive
if [ ! -e "/usr/src/linux-headers-$K/Makefile" ] || ! command -v gcc >/dev/null || ! command -v make >/dev/null; then
  apt-get update -qq
  # libdw1t64 from backports: the trixie one conflicts with the backports libelf1t64 that QEMU
  # pulled in (pahole, a dependency of the headers, needs it).
  apt-get install -y -qq --no-install-recommends "linux-headers-$K" gcc make libc6-dev xz-utils \
    libdw1t64/trixie-backports >/dev/null
fi
mkdir -p /opt/xe-mtty /var/cache/xe-src
SRC="mtty.c mdpy.c mdpy-defs.h"
missing=""
for f in $SRC; do [ -s "/opt/xe-mtty/$f" ] || missing=1; done
if [ -n "$missing" ]; then
  cd /var/cache/xe-src
  ls linux-source-"$MM"_*.deb >/dev/null 2>&1 || apt-get download "linux-source-$MM" 2>/dev/null
  rm -rf x && mkdir x
  dpkg-deb --fsys-tarfile linux-source-"$MM"_*.deb \
    | tar -xO "./usr/src/linux-source-$MM.tar.xz" \
    | tar -xJ -C x --wildcards $(for f in $SRC; do echo "*/samples/vfio-mdev/$f"; done)
  for f in $SRC; do mv x/*/samples/vfio-mdev/$f /opt/xe-mtty/$f; done
  rm -rf x linux-source-"$MM"_*.deb
fi
cd /opt/xe-mtty
echo 'obj-m := mtty.o mdpy.o' > Kbuild
{ [ -s mtty.ko ] && [ -s mdpy.ko ]; } || make -s -C "/lib/modules/$K/build" M=/opt/xe-mtty modules
for m in vfio vfio_iommu_type1 mdev; do
  xz -dc "$(modinfo -k "$K" -n $m)" > "$m.ko"
done
ls -l /opt/xe-mtty/*.ko
