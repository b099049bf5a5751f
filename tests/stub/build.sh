#!/usr/bin/env bash
# Builds build/stub.elf, build/stub-idle.elf and build/stub-seccomp-probe.elf from stub.S with
# the machine's gcc and ld.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT_DIR:-$here/../../build}
mkdir -p "$out"
for variant in stub stub-idle stub-seccomp-probe; do
  defs=()
  [ "$variant" = stub-idle ] && defs=(-DIDLE)
  [ "$variant" = stub-seccomp-probe ] && defs=(-DSECCOMP_PROBE)
  gcc -nostdlib -static -no-pie -Wl,-Ttext=0x100000 -Wl,--build-id=none -Wl,-n -Wl,-s \
    "${defs[@]}" -o "$out/$variant.elf.tmp" "$here/stub.S"
  mv "$out/$variant.elf.tmp" "$out/$variant.elf"
done
