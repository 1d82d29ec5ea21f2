#!/usr/bin/env bash
# Installs what Draftwire needs on a Debian machine, when missing: system packages
# (nats-server, OpenBLAS, Gloo, cmake, a C++ compiler), the npm dependencies, and the
# native addon. Safe to run again: it only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
dpkg -s libgloo-dev >/dev/null 2>&1 || need+=(libgloo-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The tests check the wire format and the f16 kernel against Python's msgpack and numpy, and
# commit samples with a Python producer (test/fixtures/wire/produce.py: msgpack, nats-py).
if ! python3 -c "import msgpack, numpy, nats" >/dev/null 2>&1; then
  echo "setup: pip install msgpack numpy nats-py"
  python3 -m pip install -q msgpack numpy nats-py
fi
# test/equivalence/torch-step.test.ts checks the native step against PyTorch (CPU wheel).
if ! python3 -c "import torch, safetensors" >/dev/null 2>&1; then
  echo "setup: pip install torch safetensors (CPU)"
  python3 -m pip install -q --extra-index-url https://download.pytorch.org/whl/cpu torch safetensors
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund
fi

node scripts/build-native.js
