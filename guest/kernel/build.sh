#!/usr/bin/env bash
# Build the Roost guest kernel from Debian's linux-source-6.1.
#
#   build.sh OUT_DIR
#
# Applies guest/kernel/patches/*.patch in order. Produces OUT_DIR/vmlinux (an uncompressed ELF with a PVH entry note, which
# QEMU's microvm machine boots directly) and OUT_DIR/config. The caller (roost
# setup) keys OUT_DIR by a hash of this script, the config fragment and the
# source tarball, so a second run does nothing.
set -euo pipefail

out=${1:?usage: build.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
tarball=${ROOST_KERNEL_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
jobs=${ROOST_BUILD_JOBS:-$(nproc)}

[ -f "$tarball" ] || { echo "kernel source $tarball not found: apt-get install linux-source-6.1" >&2; exit 1; }

work="$out.work"
rm -rf "$work"
mkdir -p "$work"
make_pid=
# On any exit, including an aborted setup: stop a running make, drop the tree.
# Nothing in here may fail: under set -e a failing trap command becomes the
# script's exit status.
cleanup() {
  if [ -n "$make_pid" ]; then kill "$make_pid" 2>/dev/null || true; fi
  rm -rf "$work" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "kernel: extracting $(basename "$tarball")"
tar -xf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n 1)
[ -n "$src" ] || { echo "no linux-source-* directory in $tarball" >&2; exit 1; }

cd "$src"
# Roost's own changes to the kernel, in order. Each is small and says why.
for p in "$here"/patches/*.patch; do
  [ -e "$p" ] || continue
  echo "kernel: applying $(basename "$p")"
  patch -p1 --quiet --forward < "$p"
done

echo "kernel: configuring (tinyconfig + guest/kernel/roost.config)"
make -s ARCH=x86_64 tinyconfig >/dev/null
./scripts/kconfig/merge_config.sh -m .config "$here/roost.config" >/dev/null
# The fragment overrides tinyconfig's choices (HZ, unwinder) on purpose: drop those notices.
make -s ARCH=x86_64 olddefconfig 2>&1 >/dev/null | { grep -v 'changes choice state' || true; } >&2

# Every option the fragment asks for must have survived olddefconfig; a silent
# drop (an unmet dependency) would give a kernel that boots but lacks a feature.
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=*) ;; *) continue ;; esac
  if ! grep -qx "$line" .config; then echo "kernel: config option not applied: $line" >&2; missing=1; fi
done < "$here/roost.config"
[ "$missing" = 0 ] || exit 1

echo "kernel: compiling vmlinux with $jobs jobs (a few minutes)"
make -s ARCH=x86_64 -j"$jobs" vmlinux KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970" KBUILD_BUILD_USER=roost KBUILD_BUILD_HOST=roost &
make_pid=$!
# A heartbeat, so a long build does not look hung.
ticks=0
while kill -0 "$make_pid" 2>/dev/null; do
  sleep 1
  ticks=$((ticks + 1))
  if [ $((ticks % 30)) = 0 ] && kill -0 "$make_pid" 2>/dev/null; then
    echo "kernel: still compiling, ${ticks}s, $(find . -name '*.o' | wc -l) objects built"
  fi
done
wait "$make_pid"
make_pid=

mkdir -p "$out"
cp vmlinux "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
cp .config "$out/config"
echo "kernel: built $(du -h "$out/vmlinux" | cut -f1) vmlinux"
