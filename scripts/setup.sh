#!/usr/bin/env bash
# Installs what Draftwire needs on a Debian machine, when missing: system packages
# (nats-server, OpenBLAS, Gloo, cmake, a C and a C++ compiler: the vendored BLAKE3 is C), the npm dependencies, and the
# native addon. Safe to run again: it only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# The live page's test loads it in a headless browser (puppeteer-core drives the system's Chromium).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
dpkg -s libgloo-dev >/dev/null 2>&1 || need+=(libgloo-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The tests check the wire format and the f16 kernel against Python's msgpack and numpy,
# commit samples with a Python producer (test/fixtures/wire/produce.py: msgpack, nats-py), and
# check chat templates, loss masks and the draft vocabulary file against transformers
# (test/support/chat_reference.py: transformers, tokenizers, safetensors, torch); pytest runs
# the producer package's tests (python/tests). A local package mirror is used when the
# machine has one.
pip_index=()
if [ -d /opt/pypi/simple ]; then
  pip_index=(--index-url file:///opt/pypi/simple --extra-index-url file:///opt/pypi-more/simple)
fi
pip_need=()
python3 -c "import msgpack" >/dev/null 2>&1 || pip_need+=(msgpack)
python3 -c "import numpy" >/dev/null 2>&1 || pip_need+=(numpy)
python3 -c "import nats" >/dev/null 2>&1 || pip_need+=(nats-py)
python3 -c "import transformers" >/dev/null 2>&1 || pip_need+=(transformers)
python3 -c "import tokenizers" >/dev/null 2>&1 || pip_need+=(tokenizers)
python3 -c "import safetensors" >/dev/null 2>&1 || pip_need+=(safetensors)
python3 -c "import torch" >/dev/null 2>&1 || pip_need+=(torch)
python3 -c "import pytest" >/dev/null 2>&1 || pip_need+=(pytest)
if [ ${#pip_need[@]} -gt 0 ]; then
  echo "setup: pip install ${pip_need[*]}"
  python3 -m pip install -q "${pip_index[@]}" "${pip_need[@]}"
fi
# The Python producer package (python/: `import draftwire`); its tests run this checkout's
# sources (scripts/test-python.sh), so an installed older version is left alone.
if ! python3 -c "import draftwire" >/dev/null 2>&1; then
  echo "setup: pip install ./python"
  python3 -m pip install -q "${pip_index[@]}" ./python
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund
fi

node scripts/build-native.js
