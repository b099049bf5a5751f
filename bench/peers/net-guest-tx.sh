#!/usr/bin/env bash
# bench/peers/net-guest-tx.sh: a guest's transmit path under vpod-vmm and under QEMU, the
# same run, as a peer measurement. Run as root where guests boot (inside the emulated KVM
# host here: tests/kvm-host/run -- bench/peers/net-guest-tx.sh). Both boot build/vmlinux
# with build/initrd.img and the same command: the guest serves MIB MiB from RAM with
# busybox httpd on 10.99.0.2 behind a tap of this script's own; the host fetches it twice
# with curl (the bytes go guest to host) and pings the guest. QEMU runs the microvm machine
# with KVM, virtio-net on virtio-mmio and its userspace backend (no vhost), like ours.
# Prints one line per sample.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
MIB=${MIB:-16}
RUNS=${RUNS:-3}
tap=vpodpeer0
out=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  ip link del "$tap" 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT
ip tuntap add "$tap" mode tap
ip addr add 10.99.0.1/24 dev "$tap"
ip link set "$tap" up
gcmd="ip link set lo up; ip link set eth0 up; ip addr add 10.99.0.2/24 dev eth0; dd if=/dev/zero of=/tmp/f bs=1M count=$MIB 2>/dev/null; httpd -p 8080 -h /tmp; sleep 100000"
# vpod-vmm's default command line (vmm/src/config.rs) and QEMU microvm's first
# virtio-mmio slot, which the kernel is told of before the `--` that starts init's command.
base="console=ttyS0 quiet reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd i8042.nopnp swiotlb=noforce tsc=reliable no_timer_check"
measure() {
  for _ in $(seq 1 120); do curl -s -o /dev/null -m 2 -r 0-0 http://10.99.0.2:8080/f && break; sleep 1; done
  busybox ping -c 10 -i 0.3 10.99.0.2 | tail -1 | sed "s/^/$1 ping /"
  for _ in 1 2; do
    curl -s -o /dev/null -w "$1 get %{size_download} bytes %{time_total} s %{speed_download} B/s\n" http://10.99.0.2:8080/f
  done
}
for r in $(seq 1 "$RUNS"); do
  target/release/vpod-vmm --memory 256 --net "tap=$tap,mac=52:54:00:12:34:56" --console "file:$out/vpod.log" -- sh -c "$gcmd" &
  pid=$!
  measure "vpod run$r"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  qemu-system-x86_64 -M microvm,acpi=off,auto-kernel-cmdline=off -accel kvm -cpu host -m 256 -smp 1 \
    -nodefaults -no-user-config -display none -serial "file:$out/qemu.log" \
    -kernel build/vmlinux -initrd build/initrd.img \
    -append "$base virtio_mmio.device=512@0xfeb00e00:12 -- sh -c \"$gcmd\"" \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
    -device virtio-net-device,netdev=n0,mac=52:54:00:12:34:57 &
  pid=$!
  measure "qemu run$r"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
