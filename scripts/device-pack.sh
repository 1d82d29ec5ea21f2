#!/usr/bin/env bash
# Packs what scripts/device-check.sh needs on a GPU machine that has none of this machine's
# build: the native addon built here (with its CUDA objects), the shared libraries it links
# (beside it: the addon's run path is $ORIGIN, and the check sets LD_LIBRARY_PATH for theirs),
# and this machine's node binary for a machine without Node.js, all in one xz tarball
# build/device/bundle.tar.xz, small enough to carry (the device tool carries 64 MiB).
#   bash scripts/device-pack.sh        then carry build/device to the device machine
set -euo pipefail
cd "$(dirname "$0")/.."
node scripts/build-native.js
addon=build/native/Release/draftwire_native.node
node -e "const i = require('./$addon').cudaInfo(); if (!i.built) { console.error('device-pack: this addon has no CUDA objects (no nvcc here?)'); process.exit(1); }"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib" build/device
cp "$addon" "$stage/lib/"
# Every library the addon needs but the C library itself (glibc must be the machine's own).
ldd "$addon" | awk '/=> \//{print $3}' | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' | while read -r lib; do
  cp -L "$lib" "$stage/lib/"
done
cp "$(command -v node)" "$stage/node"
git rev-parse HEAD > "$stage/commit" 2>/dev/null || echo unknown > "$stage/commit"
tar -C "$stage" -cf - . | xz -T2 -6 > build/device/bundle.tar.xz
size=$(stat -c %s build/device/bundle.tar.xz)
echo "device-pack: build/device/bundle.tar.xz $((size / 1048576)) MiB ($(ls "$stage/lib" | wc -l) files in lib/, node $(node --version))"
if [ "$size" -gt $((60 * 1048576)) ]; then echo "device-pack: over 60 MiB: the device tool will not carry it" >&2; exit 1; fi
