#!/usr/bin/env bash
# Set up everything in ./.venv, in the order that works, then run the demo (main job).
#   bash scripts/setup.sh            # install + demo
#   bash scripts/setup.sh --no-run   # install only (what CI does)
#   bash scripts/setup.sh --dry-run  # say which Python it would use and what it would do with .venv
#   PYTHON=python3.11 bash scripts/setup.sh   # this interpreter, whatever .venv has now
# Re-running skips what is already installed.
#
# Which Python: $PYTHON if set; otherwise the first that runs of python3.12 (on PATH, then
# pyenv's), python3.11, python3.10, python3.9, python3.8, python3. Python 3.12 on x86-64
# Linux gets fairseq-fixed as a binary wheel (no compiler); 3.11+ elsewhere compiles it
# (g++, a few minutes); 3.8-3.10 compile fairseq 0.12.2.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
FAIRSEQ_PY311=fairseq-fixed==0.12.3.1   # Python >= 3.11: upstream main + dataclass fix
FAIRSEQ_PY310=fairseq==0.12.2           # Python <= 3.10: the last official release
CYTHON_VERSION=3.1.8

mode=run
case "${1:-}" in
  --no-run) mode=install ;;
  --dry-run) mode=dry ;;
  "") ;;
  *) echo "error: unknown option '$1' (expected --no-run or --dry-run)" >&2; exit 2 ;;
esac

# "3.12" if the command runs and can make a venv, nothing otherwise. A pyenv shim for a
# version that is installed but not selected is on PATH yet exits 127: it must be run to know.
py_version() {
  "$1" -c 'import sys, venv; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}
supported() {  # 3.8 or newer
  local major=${1%%.*} minor=${1#*.}
  [ "$major" = 3 ] && [ "$minor" -ge 8 ] 2>/dev/null
}
pick_python() {
  if [ -n "${PYTHON:-}" ]; then
    chosen=$PYTHON; chosen_version=$(py_version "$PYTHON")
    if [ -z "$chosen_version" ]; then
      echo "error: PYTHON=$PYTHON does not run (or lacks the venv module)" >&2; exit 1
    fi
    why="PYTHON=$PYTHON"; return
  fi
  local c v
  for c in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
           python3.11 python3.10 python3.9 python3.8 python3; do
    v=$(py_version "$c")
    if [ -n "$v" ] && supported "$v"; then
      chosen=$c; chosen_version=$v; why="first that runs of python3.12, 3.11, ..., 3.8, python3"
      return
    fi
  done
  echo "error: no Python 3.8+ found (tried python3.12, pyenv's 3.12, python3.11 ... python3.8, python3); set PYTHON=..." >&2
  exit 1
}

# What to do with an existing .venv: keep it (its Python is supported and no PYTHON asks for
# another), or make it anew (broken, too old, or PYTHON names another version).
venv_action=create
venv_version=""
if [ -e .venv/bin/python ] || [ -d .venv ]; then
  venv_version=$(py_version .venv/bin/python)
  if [ -z "$venv_version" ]; then
    venv_action=recreate; venv_note=".venv exists but its python does not run"
  elif ! supported "$venv_version"; then
    venv_action=recreate; venv_note=".venv has Python $venv_version (3.8+ needed)"
  elif [ -n "${PYTHON:-}" ] && [ "$(py_version "$PYTHON")" != "$venv_version" ]; then
    venv_action=recreate; venv_note=".venv has Python $venv_version, PYTHON=$PYTHON is $(py_version "$PYTHON")"
  else
    venv_action=reuse
  fi
fi

if [ "$venv_action" = reuse ]; then
  minor=${venv_version#*.}
  echo "== reusing .venv (Python $venv_version); to build it with another: rm -rf .venv, or PYTHON=python3.X bash scripts/setup.sh"
else
  pick_python
  minor=${chosen_version#*.}
  [ "$venv_action" = recreate ] && echo "== recreating .venv: $venv_note"
  echo "== Python $chosen_version: $chosen ($why)"
fi
if [ "$minor" -le 10 ]; then
  echo "== fairseq: $FAIRSEQ_PY310, compiled here (needs g++)"
elif [ "$minor" -eq 12 ]; then
  echo "== fairseq: $FAIRSEQ_PY311, binary wheel (x86-64 Linux; compiled where none fits)"
else
  echo "== fairseq: $FAIRSEQ_PY311, compiled here (needs g++; Python 3.12 would get a binary wheel)"
fi
[ "$mode" = dry ] && exit 0

if [ "$venv_action" != reuse ]; then
  rm -rf .venv
  "$chosen" -m venv .venv
fi
PY=.venv/bin/python
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if [ "$minor" -le 10 ]; then
  # fairseq 0.12.2 pins omegaconf 2.0.6, whose metadata pip >= 24.1 refuses.
  "${PIP[@]}" "pip<24.1" "setuptools<70" wheel
else
  "${PIP[@]}" --upgrade pip "setuptools>=68" wheel
fi

echo "== torch $TORCH_VERSION"
$PY -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null \
  || "${PIP[@]}" "torch==$TORCH_VERSION"

echo "== fairseq"
if ! $PY -c "import fairseq" 2>/dev/null; then
  installed=no
  if [ "$minor" -ge 11 ]; then
    # A binary wheel where one fits this Python and platform (CPython 3.12, x86-64 Linux).
    "${PIP[@]}" --only-binary fairseq-fixed "$FAIRSEQ_PY311" 2>/dev/null && installed=yes \
      || echo "   no binary wheel of $FAIRSEQ_PY311 for this Python/platform: compiling (a few minutes)"
  else
    echo "   compiling $FAIRSEQ_PY310 (a few minutes)"
  fi
  if [ "$installed" = no ]; then
    # fairseq's setup.py imports torch and cythonizes: build it against the torch above.
    # Without --no-build-isolation pip would fetch a second, multi-GB torch to build with.
    "${PIP[@]}" "cython==$CYTHON_VERSION" numpy
    if [ "$minor" -le 10 ]; then
      "${PIP[@]}" --no-build-isolation "$FAIRSEQ_PY310"
    else
      "${PIP[@]}" --no-build-isolation "$FAIRSEQ_PY311"
    fi
  fi
fi

echo "== the rest, and this package"
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-build-isolation --no-deps -e .
$PY -c "import sys, torch, fairseq, torchdiffeq, node_transformer; print('ready: Python', sys.version.split()[0], '| torch', torch.__version__, '| fairseq', fairseq.__version__, '| torchdiffeq', torchdiffeq.__version__)"

if [ "$mode" = run ]; then
  exec bash scripts/demo.sh
fi
