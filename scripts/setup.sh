#!/usr/bin/env bash
# Create .venv and install ldct-node into it. Idempotent: a second run only checks.
# PyTorch: the CPU wheel where there is no NVIDIA GPU (a bare `torch` would pull a multi-GB
# CUDA build), the default CUDA build where `nvidia-smi` sees a GPU.
# Usage: scripts/setup.sh [--test]   (--test also installs the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
extras=""
[ "${1:-}" = "--test" ] && extras="[test,postgres]"
stamp=".venv/.ldct-setup${extras:+-test}"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
$PIP install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing PyTorch with CUDA" >&2
    $PIP install -q "torch>=2.2,<=2.14.1"
  else
    echo "setup: no GPU: installing the CPU build of PyTorch" >&2
    $PIP install -q "torch==2.13.0+cpu" 2>/dev/null \
      || $PIP install -q "torch>=2.2,<=2.14.1" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
$PIP install -q -e ".${extras}"
touch "$stamp"
