#!/bin/busybox sh
# The guest of the kernel TLS test: Debian's kernel with its `tls` module, two emulated hosts
# on loopback (`xe-vfio serve`), and migrations over mutual TLS: first with the `tls` module but
# not the AES-GCM template (the kernel refuses the keys: both sides seal in xe-vfio, on sockets
# whose upper-layer protocol is set), then the kernel sealing and opening on both sides, then
# on one side only (the other sealing in xe-vfio) each way, the kernel's side pre-copying
# (the sources offer PRE_COPY: its rounds are written through the kernel's records). Each destination VF is saved
# afterwards and its stream hashed: it must be the stream restored into the source. Every
# result is a tagged console line the host checks.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
ip link set lo up
mods() {
  for m in "$@"; do insmod /m/$m.ko || { echo "KT-ERROR insmod $m"; poweroff -f; }; done
}
mods tls
echo "KT-ULP $(cat /proc/sys/net/ipv4/tcp_available_ulp)"
X=/bin/xe-vfio
$X serve --platform bmg --vfs 5 --socket-dir /tmp/a --lmem-per-vf 8M --pre-copy >/tmp/a.log 2>&1 &
$X serve --platform bmg --vfs 4 --socket-dir /tmp/b --lmem-per-vf 8M >/tmp/b.log 2>&1 &
# Until the servers listen (bounded).
i=0
until [ -S /tmp/a/vf5.sock ] && [ -S /tmp/b/vf4.sock ]; do
  i=$((i + 1)); [ $i -gt 600 ] && { echo "KT-ERROR serve"; cat /tmp/a.log /tmp/b.log; poweroff -f; }
  sleep 0.1
done
echo "KT-SHA-ORIG $(sha256sum /s.bin | cut -d' ' -f1)"
for v in 1 2 3 4; do
  $X restore --input /s.bin --to /tmp/a/vf$v.sock >/dev/null || echo "KT-ERROR restore $v"
done
# One migration: tag, VF, source's extra flag, destination's extra flag, port.
one() {
  $X receive --listen 127.0.0.1:$5 --to /tmp/b/vf$2.sock --tls-cert /c/127.0.0.1.pem \
    --tls-key /c/127.0.0.1.key --tls-ca /c/ca.pem $4 >/tmp/r$1.out 2>/tmp/r$1.err &
  r=$!
  i=0
  until grep -q ready /tmp/r$1.out 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 600 ] && break
    sleep 0.1
  done
  $X migrate --from /tmp/a/vf$2.sock --to tcp://127.0.0.1:$5 --tls-cert /c/source.pem \
    --tls-key /c/source.key --tls-ca /c/ca.pem $3 --json >/tmp/m$1.json 2>/tmp/m$1.err
  echo "KT-$1-MIGRATE rc=$?"
  wait $r
  echo "KT-$1-RECEIVE rc=$?"
  echo "KT-$1-SRC $(grep '"transport"' /tmp/m$1.json)"
  echo "KT-$1-DST $(grep 'connected' /tmp/r$1.err)"
  echo "KT-$1-SPLICED $(grep '"spliced"' /tmp/m$1.json)"
  echo "KT-$1-PRECOPY $(grep '"precopy_bytes"' /tmp/m$1.json)"
  echo "KT-$1-STATE $(grep '"destination_state"' /tmp/m$1.json)"
  cat /tmp/m$1.err /tmp/r$1.err
  $X save --from /tmp/b/vf$2.sock -o /tmp/o.bin >/dev/null
  echo "KT-$1-SHA $(sha256sum /tmp/o.bin | cut -d' ' -f1)"
  rm -f /tmp/o.bin
}
one NG 4 "" "" 7000
mods crypto_null gcm gf128mul ghash_generic
one KK 1 "" "" 7001
one UK 2 --no-kernel-tls "" 7002
one KU 3 --pre-copy --no-kernel-tls 7003
# A source whose certificate is from another CA: the destination's refusal reaches the
# source as an alert through the kernel's records, before anything stops.
$X receive --listen 127.0.0.1:7004 --to /tmp/b/vf1.sock --tls-cert /c/127.0.0.1.pem \
  --tls-key /c/127.0.0.1.key --tls-ca /c/ca.pem >/tmp/rx.out 2>/tmp/rx.err &
r=$!
i=0
until grep -q ready /tmp/rx.out 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 600 ] && break
  sleep 0.1
done
$X migrate --from /tmp/a/vf5.sock --to tcp://127.0.0.1:7004 --tls-cert /c/other.pem \
  --tls-key /c/other.key --tls-ca /c/ca.pem >/tmp/mx.out 2>/tmp/mx.err
echo "KT-BADCA-MIGRATE rc=$?"
echo "KT-BADCA-OUT $(tr '\n' ' ' < /tmp/mx.err)"
kill $r
echo "KT-BADCA-RECEIVE $(tr '\n' ' ' < /tmp/rx.err)"
echo KT-DONE
poweroff -f
