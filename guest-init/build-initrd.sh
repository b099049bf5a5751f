#!/usr/bin/env bash
# Builds vpod-init as a static binary (glibc with crt-static: no musl toolchain can be
# fetched here) and packs two uncompressed cpio (newc) initrds:
# - build/pod-initrd.img, what every pod VM boots (vpod, vpod-cri, the containerd shim):
#   vpod-init as /init and nothing else it does not use; the guest copies the whole initrd
#   into its tmpfs root and keeps it there, so every byte is guest memory in every pod;
# - build/initrd.img, the same plus Debian's busybox-static with its applet links, so that
#   users of the standalone VMM (`vpod-vmm -- sh -c ...`) can run shell commands.
# vpod-init itself uses nothing from busybox.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${OUT:-$top/build/initrd.img}
pod_out=${POD_OUT:-$top/build/pod-initrd.img}
busybox=${BUSYBOX:-/bin/busybox}
target=x86_64-unknown-linux-gnu

# The `guest` profile (Cargo.toml) optimises vpod-init for size: the kernel copies every
# byte of the initrd at each boot, and under emulation those copies are much of the boot.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile guest --locked \
  --manifest-path "$top/Cargo.toml" -p vpod-init --target "$target"
init=$top/target/$target/guest/vpod-init
if ! (ldd "$init" 2>&1 || true) | grep -q -e "not a dynamic" -e "statically linked"; then
  echo "guest-init: $init is not statically linked" >&2; exit 1
fi
if ! (ldd "$busybox" 2>&1 || true) | grep -q "not a dynamic"; then
  echo "guest-init: $busybox is not a static busybox (install busybox-static)" >&2; exit 1
fi

root=$(mktemp -d); trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc}
# The kernel opens /dev/console for init's stdio before anything is mounted.
mknod -m 600 "$root/dev/console" c 5 1
install -s -m 755 "$init" "$root/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"

# Packs the tree under $root into the cpio at $1.
pack() {
  mkdir -p "$(dirname "$1")"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$1.tmp"
  mv "$1.tmp" "$1"
}

pack "$pod_out"
install -m 755 "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
pack "$out"
