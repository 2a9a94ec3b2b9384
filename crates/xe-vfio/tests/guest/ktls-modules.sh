#!/bin/sh
# Runs inside the cached trixie root (chroot): the guest kernel $1's modules for kernel TLS
# with AES-GCM — tls, and the gcm template with what it needs (AES and CTR are built in) — in
# /opt/xe-ktls, decompressed. Idempotent.
set -eu
K=$1
if ! command -v xz >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xz-utils >/dev/null
fi
mkdir -p /opt/xe-ktls
for m in crypto_null gcm gf128mul ghash_generic tls; do
  [ -s /opt/xe-ktls/$m.ko ] || xz -dc "$(modinfo -k "$K" -n $m)" > /opt/xe-ktls/$m.ko
done
ls -l /opt/xe-ktls
