#!/usr/bin/env bash
# The prepared check for a machine with one CUDA GPU (about 2-3 minutes):
#  1. the CUDA tests (pytest -m gpu),
#  2. a one-minute timing of each variant at transformer-base sizes (tokens/s, NFE, memory),
#  3. generation speed (beam 4, untrained mini models): sentences/s of the classic, project-best
#     and config 07, cached and recomputed, with the NFE of generation,
#  4. fairseq-train steps with --fp16, --bf16 and --amp (scripts/gpu-precision.sh).
# Results go to ${OUT:-runs/gpu-check}/ (log and timing JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUTDIR=${OUT:-runs/gpu-check}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" || exit 1
echo "== CUDA tests"
"$PY" -m pytest -q -o addopts="-p no:cacheprovider" -m gpu tests 2>&1 | tee "$OUTDIR/gpu-tests.log"
rc=${PIPESTATUS[0]}
echo "== timing, 12 s per variant (5 variants)"
"$PY" scripts/time_variants.py --device cuda --seconds 12 --json "$OUTDIR/timing.json" 2>&1 \
  | grep -v Warning | tee "$OUTDIR/timing.log"
echo "== generation, beam 4, 24 sentences x 30 tokens (untrained mini models)"
"$PY" scripts/time_generation.py --device cuda --repeats 2 --json "$OUTDIR/generation.json" 2>&1 \
  | grep -v Warning | tee "$OUTDIR/generation.log"
echo "== mixed precision: fairseq-train with --fp16, --bf16, --amp"
PY="$PY" OUT="$OUTDIR" bash scripts/gpu-precision.sh 2>&1 | tee "$OUTDIR/precision.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
exit $rc
