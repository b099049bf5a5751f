#!/usr/bin/env bash
# Packs build/test-initrd.img: an uncompressed cpio (newc) with Debian's busybox-static and
# the init script beside this file. Used to test kernels and VMMs without our own init.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/../../build/test-initrd.img}
busybox=${BUSYBOX:-/bin/busybox}
if ! (ldd "$busybox" 2>&1 || true) | grep -q "not a dynamic"; then
  echo "tests/initramfs: $busybox is not a static busybox (install busybox-static)" >&2; exit 1
fi
root=$(mktemp -d); trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp}
# The kernel opens /dev/console for init's stdio before anything is mounted.
mknod -m 600 "$root/dev/console" c 5 1
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"; chmod 755 "$root/init"
mkdir -p "$(dirname "$out")"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$out.tmp"
mv "$out.tmp" "$out"
