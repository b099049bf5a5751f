#!/usr/bin/env bash
# Builds vpod-init as a static binary (glibc with crt-static: no musl toolchain can be
# fetched here) and packs two uncompressed cpio (newc) initrds:
# - build/pod-initrd.img, what every pod VM boots (vpod, vpod-cri, the containerd shim):
#   vpod-init as /init and nothing else it does not use; the guest unpacks the whole initrd
#   into its initramfs and keeps it there (the VMM later shares those pages between pods);
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

# Packs the tree under $root into the cpio at $1, with /init's bytes starting 4 KiB into
# the file: `.`, then `.init-pad` (zeros), then `init`, then the rest. newc puts each entry's
# data after a 110-byte header and its NUL-terminated name, both padded to 4 bytes, so
# `init`'s data starts at 112 + 120 + pad + 116 = 4096 with pad 3748. Each page of the /init
# the guest unpacks then equals a page of the initrd, and the VMM shares them between VMs
# once booted (vmm/src/vstate/file_pages.rs). The check below fails the build if not.
pack() {
  mkdir -p "$(dirname "$1")"
  head -c 3748 /dev/zero > "$root/.init-pad"
  (cd "$root" && {
    printf '.\n./.init-pad\n./init\n'
    find . | LC_ALL=C sort | grep -v -x -e . -e ./.init-pad -e ./init
  } | cpio -o -H newc --quiet -R 0:0) > "$1.tmp"
  if ! cmp -s -i 4096:0 -n "$(stat -c %s "$root/init")" "$1.tmp" "$root/init"; then
    echo "guest-init: /init is not at offset 4096 of $1" >&2; exit 1
  fi
  mv "$1.tmp" "$1"
}

pack "$pod_out"
install -m 755 "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
pack "$out"
