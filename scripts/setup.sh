#!/usr/bin/env bash
# Set up everything in ./.venv, in the order that works, then run the demo (main job).
#   bash scripts/setup.sh            # install + demo
#   bash scripts/setup.sh --no-run   # install only (what CI does)
# Re-running skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
FAIRSEQ_PY311=fairseq-fixed==0.12.3.1   # Python >= 3.11: upstream main + dataclass fix
FAIRSEQ_PY310=fairseq==0.12.2           # Python <= 3.10: the last official release
CYTHON_VERSION=3.1.8

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
minor=$($PY -c 'import sys; print(sys.version_info[1])')
major=$($PY -c 'import sys; print(sys.version_info[0])')
if [ "$major" -ne 3 ] || [ "$minor" -lt 8 ]; then
  echo "error: Python 3.8+ needed, .venv has $($PY --version)" >&2; exit 1
fi
if [ "$minor" -le 10 ]; then
  # fairseq 0.12.2 pins omegaconf 2.0.6, whose metadata pip >= 24.1 refuses.
  "${PIP[@]}" "pip<24.1" "setuptools<70" wheel
else
  "${PIP[@]}" --upgrade pip "setuptools>=68" wheel
fi

echo "== torch $TORCH_VERSION"
$PY -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null \
  || "${PIP[@]}" "torch==$TORCH_VERSION"

echo "== fairseq (compiles C++ extensions the first time: a few minutes)"
if ! $PY -c "import fairseq" 2>/dev/null; then
  # fairseq's setup.py imports torch and cythonizes: build it against the torch above.
  # Without --no-build-isolation pip would fetch a second, multi-GB torch to build with.
  "${PIP[@]}" "cython==$CYTHON_VERSION" numpy
  if [ "$minor" -le 10 ]; then
    "${PIP[@]}" --no-build-isolation "$FAIRSEQ_PY310"
  else
    "${PIP[@]}" --no-build-isolation "$FAIRSEQ_PY311"
  fi
fi

echo "== the rest, and this package"
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-build-isolation --no-deps -e .
$PY -c "import torch, fairseq, torchdiffeq, node_transformer; print('ready: torch', torch.__version__, '| fairseq', fairseq.__version__, '| torchdiffeq', torchdiffeq.__version__)"

if [ "${1:-}" != "--no-run" ]; then
  exec bash scripts/demo.sh
fi
