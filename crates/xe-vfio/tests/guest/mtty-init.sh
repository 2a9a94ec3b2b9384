#!/bin/busybox sh
# The guest of the kernel-backend test: the real Linux VFIO core (vfio, vfio_iommu_type1,
# mdev) and the kernel's mtty sample driver, driven by a static xe-vfio. Every result is a
# tagged console line the host checks.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in vfio vfio_iommu_type1 mdev mtty mdpy; do
  insmod /m/$m.ko || { echo "MT-ERROR insmod $m"; poweroff -f; }
done
T=/sys/class/mdev_bus/mtty/mdev_supported_types
A=83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
B=83b8f4f2-509f-382f-3c1e-e6bfe0fa1002
C=83b8f4f2-509f-382f-3c1e-e6bfe0fa1003
D=83b8f4f2-509f-382f-3c1e-e6bfe0fa1004
for u in $A $B $C; do echo $u > $T/mtty-2/create; done
# D has one port: not the same device type as A.
echo $D > $T/mtty-1/create
echo "MT-GROUPS $(ls /dev/vfio | tr '\n' ' ')"
X=/bin/xe-vfio
r() { $X region $1 $2 $3 --read 1; }
w() { $X region $1 $2 $3 --write $4; }
# The ports' registers that reading does not change (not RX, which pops the FIFO, nor IIR).
snap() {
  s=""
  for p in 0 1; do for o in 1 3 4 5 6 7; do s="$s$(r $1 $p $o)"; done; done
  echo $s
}
# Recognisable state in A: line control, interrupt enables, modem control, scratch, and two
# bytes in each port's FIFO.
w $A 0 3 03; w $A 0 1 05; w $A 0 4 0b; w $A 0 7 5a; w $A 0 0 58; w $A 0 0 45
w $A 1 3 1f; w $A 1 1 01; w $A 1 4 08; w $A 1 7 a5; w $A 1 0 6d; w $A 1 0 74
echo "MT-SNAP-A $(snap $A)"

# Live migration A → B through the kernel, with PRE_COPY (mtty offers it).
$X migrate --from $A --to $B --pre-copy --json > /tmp/mig.json 2>/tmp/mig.err
echo "MT-MIGRATE rc=$?"
echo "MT-MIGRATE-JSON $(tr -d ' \n' < /tmp/mig.json)"
cat /tmp/mig.err
echo "MT-SNAP-B $(snap $B)"

# B → file → C.
$X save --from $B -o /tmp/b.stream > /tmp/save.out 2>&1; echo "MT-SAVE rc=$?"
cat /tmp/save.out
$X inspect /tmp/b.stream > /tmp/inspect.out 2>&1; echo "MT-INSPECT rc=$?"
echo "MT-INSPECT-OUT $(tr '\n' ' ' < /tmp/inspect.out)"
$X restore --to $C -i /tmp/b.stream > /tmp/restore.out 2>&1; echo "MT-RESTORE rc=$?"
cat /tmp/restore.out
echo "MT-SNAP-C $(snap $C)"
# The FIFOs came along: pop them (RX of each port, twice).
echo "MT-FIFO-B $(r $B 0 0)$(r $B 0 0)$(r $B 1 0)$(r $B 1 0)"
echo "MT-FIFO-C $(r $C 0 0)$(r $C 0 0)$(r $C 1 0)$(r $C 1 0)"

# Failures: a destination of another type (the source must run on, its state intact), a
# device in use, a PCI function that is no VFIO device.
# (A was left STOP by its migration; C runs.)
echo "MT-SNAP-C2 $(snap $C)"
$X migrate --from $C --to $D > /tmp/bad.out 2>&1; echo "MT-BADDST rc=$?"
echo "MT-BADDST-OUT $(tr '\n' ' ' < /tmp/bad.out)"
echo "MT-SNAP-C3 $(snap $C)"
G=$(basename $(readlink /sys/bus/mdev/devices/$A/iommu_group))
exec 3<>/dev/vfio/$G
$X save --from $A -o /tmp/x > /tmp/busy.out 2>&1; echo "MT-BUSY rc=$?"
echo "MT-BUSY-OUT $(tr '\n' ' ' < /tmp/busy.out)"
exec 3>&-
$X save --from 0000:00:00.0 -o /tmp/x > /tmp/novfio.out 2>&1; echo "MT-NOVFIO rc=$?"
echo "MT-NOVFIO-OUT $(tr '\n' ' ' < /tmp/novfio.out)"
# An mdev without migration (mdpy).
E=83b8f4f2-509f-382f-3c1e-e6bfe0fa1005
P=/sys/class/mdev_bus/mdpy/mdev_supported_types
echo $E > $P/$(ls $P | head -1)/create
$X save --from $E -o /tmp/x > /tmp/nomig.out 2>&1; echo "MT-NOMIG rc=$?"
echo "MT-NOMIG-OUT $(tr '\n' ' ' < /tmp/nomig.out)"
# Not root: /dev/vfio/N is root's.
echo "nobody:x:65534:65534::/:/bin/sh" > /etc/passwd
su -s /bin/sh -c "$X save --from $C -o /tmp/x" nobody > /tmp/perm.out 2>&1
echo "MT-PERM rc=$?"
echo "MT-PERM-OUT $(tr '\n' ' ' < /tmp/perm.out)"

# The state machine of a real device against vfio-core's.
$X fsm-check $A > /tmp/fsm.out 2>&1; echo "MT-FSM rc=$?"
cat /tmp/fsm.out
echo MT-DONE
poweroff -f
