#!/usr/bin/env bash
# Builds the guest kernel: Debian's linux-source-6.12, tinyconfig plus the fragments in
# fragments/, everything built in, an uncompressed vmlinux. The result is cached outside
# the repository under $VPOD_CACHE_DIR/kernel/<hash>, keyed by the fragments, this script,
# the source package version and the compiler, and copied to $OUT (default build/vmlinux).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cache=${VPOD_CACHE_DIR:-/var/cache/vpod}
out=${OUT:-$top/build/vmlinux}
jobs=${JOBS:-$(nproc)}
pkg=linux-source-6.12

log() { echo "kernel-config: $*" >&2; }

need_pkgs=()
dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need_pkgs+=("$pkg")
for p in build-essential bc bison flex libelf-dev libssl-dev xz-utils cpio; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  if [ "$(id -u)" != 0 ]; then
    log "error: missing packages ${need_pkgs[*]} and not root to install them"; exit 1
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

src_version=$(dpkg-query -W -f='${Version}' "$pkg")
fragments=("$here"/fragments/*.conf)
hash=$( {
  echo "source $pkg $src_version"
  gcc --version | head -n1
  for f in "${fragments[@]}"; do echo "== $(basename "$f")"; cat "$f"; done
  cat "$0"
} | sha256sum | cut -c1-16)
entry=$cache/kernel/$hash

mkdir -p "$(dirname "$out")"
if [ -f "$entry/vmlinux" ]; then
  log "cached kernel $hash ($pkg $src_version)"
  cp "$entry/vmlinux" "$out.tmp" && mv "$out.tmp" "$out"
  cp "$entry/config" "$(dirname "$out")/vmlinux.config"
  exit 0
fi

log "building kernel $hash from $pkg $src_version with $jobs jobs"
mkdir -p "$cache/kernel"
# The unpacked source is kept per source version: unpacking takes a minute.
srcdir=$cache/src/$pkg-$src_version
if [ ! -f "$srcdir/.unpacked" ]; then
  rm -rf "$srcdir"; mkdir -p "$srcdir"
  tar -C "$srcdir" --strip-components=1 -xf "/usr/src/$pkg.tar.xz"
  touch "$srcdir/.unpacked"
fi

work=$(mktemp -d "$cache/kernel/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
obj=$work/obj
mkdir -p "$obj"
make -s -C "$srcdir" O="$obj" ARCH=x86_64 tinyconfig >/dev/null
"$srcdir/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}" >/dev/null
make -s -C "$srcdir" O="$obj" ARCH=x86_64 olddefconfig >/dev/null

# Every symbol a fragment asks for must have survived olddefconfig with its value.
dropped=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      sym=${line%%=*}
      if ! grep -qxF "$line" "$obj/.config"; then
        got=$(grep -E "^($sym=|# $sym is not set)" "$obj/.config" || echo "absent")
        log "error: requested $line but got: $got"; dropped=1
      fi ;;
    "# CONFIG_"*" is not set")
      sym=${line#\# }; sym=${sym%% *}
      if grep -qE "^$sym=" "$obj/.config"; then
        log "error: requested $sym off but got: $(grep -E "^$sym=" "$obj/.config")"; dropped=1
      fi ;;
  esac
done < <(cat "${fragments[@]}")
if [ "$dropped" != 0 ]; then
  log "error: olddefconfig dropped requested symbols (missing dependencies?); see above"
  exit 1
fi

make -s -C "$srcdir" O="$obj" ARCH=x86_64 -j"$jobs" vmlinux
mkdir -p "$work/entry"
cp "$obj/vmlinux" "$work/entry/vmlinux"
cp "$obj/.config" "$work/entry/config"
rm -rf "$entry"
mv "$work/entry" "$entry"
cp "$entry/vmlinux" "$out.tmp" && mv "$out.tmp" "$out"
cp "$entry/config" "$(dirname "$out")/vmlinux.config"
log "built $out ($(du -h "$out" | cut -f1))"
