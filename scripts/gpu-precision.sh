#!/usr/bin/env bash
# Mixed-precision training steps on CUDA, called by scripts/gpu-check.sh (about a minute):
# fairseq-train on the generated toy task with a NODE encoder and decoder (dopri5, adjoint),
# once each with --fp16, --bf16 and --amp, a few updates each. A mode passes when training
# finishes with a finite loss; NFE and loss scale are printed for the record.
#   PY=python3 OUT=dir bash scripts/gpu-precision.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUTDIR=${OUT:-runs/gpu-check}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUTDIR"
"$PY" scripts/make_toy_data.py "$WORK/raw" --train 600 --valid 40 --test 10 --max-len 12 >/dev/null || exit 1
"$PY" -c "from fairseq_cli.preprocess import cli_main; cli_main()" --source-lang src --target-lang tgt \
  --joined-dictionary --trainpref "$WORK/raw/train" --validpref "$WORK/raw/valid" \
  --destdir "$WORK/bin" --workers 1 >/dev/null 2>&1 || { echo "fairseq-preprocess failed"; exit 1; }
rc=0
for mode in --fp16 --bf16 --amp; do
  log="$OUTDIR/precision${mode}.log"
  "$PY" -c "from fairseq_cli.train import cli_main; cli_main()" "$WORK/bin" \
    --user-dir node_transformer --task node_translation --arch node_transformer \
    --node-encoder --node-decoder --node-max-nfe 1000 $mode \
    --encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 \
    --decoder-ffn-embed-dim 128 --encoder-attention-heads 4 --decoder-attention-heads 4 \
    --share-all-embeddings --dropout 0.1 --optimizer adam --lr 1e-3 --lr-scheduler inverse_sqrt \
    --warmup-updates 10 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens 1000 --max-update 12 --save-dir "$WORK/ckpt$mode" --no-save \
    --log-format json --log-interval 4 --num-workers 0 --seed 1 >"$log" 2>&1
  code=$?
  last=$(grep '| train |' "$log" | tail -1 | sed 's/.*| train | //')
  if [ $code -eq 0 ] && [ -n "$last" ] && ! grep -q '"train_loss": "\(inf\|nan\)"' <<<"$last"; then
    echo "precision $mode: ok $last"
  else
    echo "precision $mode: FAILED (rc $code), see $log"; tail -5 "$log"; rc=1
  fi
done
exit $rc
