#!/usr/bin/env bash
# The one device run of the CUDA backend (issue 15), on a GPU machine with a copy of the tree:
#   here:   bash scripts/device-pack.sh                        (builds build/device/bundle.tar.xz)
#   there:  bash scripts/device-check.sh                       (device tool: carry build/device)
# Unpacks the bundle (the addon built here, its libraries beside it, a node binary for a
# machine without Node.js), finds cuBLAS and NCCL where that machine's PyTorch keeps them,
# and runs scripts/device-check.mjs: one line per check, figures in $OUT/device-check.json.
# Under 8 minutes on an H200 (most of it PyTorch's two baseline runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=build/device/bundle.tar.xz
[ -f "$bundle" ] || { echo "device-check: $bundle is missing: run scripts/device-pack.sh first and carry build/device" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
xz -dc "$bundle" | tar -C "$work" -xf -
echo "device-check: bundle of commit $(cat "$work/commit"), this tree $(git rev-parse HEAD 2>/dev/null || echo unknown)"
node_bin=$(command -v node || echo "$work/node")
export LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# cuBLAS and NCCL: the CUDA wheels PyTorch installs (site-packages/nvidia/*/lib), then torch/lib.
libs=$(python3 - <<'PY' 2>/dev/null || true
import glob, os
try:
    import torch
    base = os.path.dirname(os.path.dirname(torch.__file__))
    dirs = sorted(glob.glob(os.path.join(base, 'nvidia', '*', 'lib'))) + [os.path.join(os.path.dirname(torch.__file__), 'lib')]
    print(':'.join(d for d in dirs if os.path.isdir(d)))
except Exception:
    pass
PY
)
export DRAFTWIRE_CUDA_LIBS="${DRAFTWIRE_CUDA_LIBS:-$libs}"
export OUT="${OUT:-$PWD/build/device}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "device-check: nvidia-smi not found"
exec "$node_bin" scripts/device-check.mjs "$work/lib/draftwire_native.node"
