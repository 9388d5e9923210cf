#!/usr/bin/env bash
# Set up .venv with diffexplain installed (editable) and the extras named in $1 (default: lab).
#
# torch: an existing install is kept. Otherwise, on a machine with an NVIDIA GPU (or a Mac) the
# default PyPI build is installed; on a GPU-less Linux machine a local CPU wheel of torch 2.13.0 is
# preferred when pip can see one (pip's find-links), so no CUDA packages are downloaded.
# Override with DIFFEXPLAIN_TORCH, e.g. DIFFEXPLAIN_TORCH="torch==2.5.1" or a wheel path.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-lab}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
pip() { python -m pip "$@"; }

if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${DIFFEXPLAIN_TORCH:-}" ]; then
    echo "setup: installing $DIFFEXPLAIN_TORCH (from DIFFEXPLAIN_TORCH)"
    pip install -q "$DIFFEXPLAIN_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" = Darwin ]; then
    echo "setup: GPU or Mac found: installing torch from PyPI"
    pip install -q torch
  elif pip install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null; then
    echo "setup: installed the local CPU wheel of torch 2.13.0"
    pip install -q "torch==2.13.0"  # its own dependencies
  else
    echo "setup: no GPU and no local CPU wheel: installing torch from PyPI."
    echo "       (To avoid the large CUDA download, install torch from PyTorch's CPU wheel index first.)"
    pip install -q torch
  fi
fi

echo "setup: installing diffexplain[$extras]"
pip install -q -e ".[$extras]"
python -c "import torch, diffusers, transformers; print(f'setup: torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}')"
