#!/usr/bin/env bash
# The main job on the embedded default: generate the toy task, train a small
# NODE-Transformer (NODE encoder + NODE decoder, dopri5, adjoint) with fairseq-train,
# then translate its test set with fairseq-generate (beam search). No download.
#   bash scripts/demo.sh [OUTDIR]      (default runs/demo; EPOCHS=N to change the length)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/demo}
EPOCHS=${EPOCHS:-14}
BIN=.venv/bin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny tensors: one thread is faster on 2 cores

$BIN/python scripts/make_toy_data.py "$OUT/raw" --train 1500 --valid 50 --test 40
if [ ! -f "$OUT/data-bin/dict.src.txt" ]; then
  $BIN/fairseq-preprocess --source-lang src --target-lang tgt --joined-dictionary --workers 1 \
    --trainpref "$OUT/raw/train" --validpref "$OUT/raw/valid" --testpref "$OUT/raw/test" \
    --destdir "$OUT/data-bin" > "$OUT/preprocess.log" 2>&1
fi

echo "== fairseq-train: NODE encoder + NODE decoder, $EPOCHS epochs (NFE columns: nfe_*)"
$BIN/fairseq-train "$OUT/data-bin" --user-dir node_transformer \
  --task node_translation --arch node_transformer --node-encoder --node-decoder \
  --node-method dopri5 --node-rtol 0.01 --node-atol 0.01 --node-max-nfe 500 \
  --encoder-embed-dim 32 --decoder-embed-dim 32 --encoder-ffn-embed-dim 64 \
  --decoder-ffn-embed-dim 64 --encoder-attention-heads 4 --decoder-attention-heads 4 \
  --share-all-embeddings --dropout 0.0 --activation-fn gelu \
  --optimizer adam --lr 5e-3 --lr-scheduler inverse_sqrt --warmup-updates 60 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 400 \
  --max-epoch "$EPOCHS" --save-dir "$OUT/checkpoints" --no-epoch-checkpoints \
  --tensorboard-logdir "$OUT/tensorboard" --log-format simple --log-interval 10 \
  --num-workers 0 --seed 1 2>&1 | grep -E "train_inner|\| (train|valid) \||done training|error" || true
[ -f "$OUT/checkpoints/checkpoint_best.pt" ] || { echo "error: training left no checkpoint" >&2; exit 1; }

echo "== fairseq-generate: beam 4 on the 40 test sentences"
$BIN/fairseq-generate "$OUT/data-bin" --user-dir node_transformer --task node_translation \
  --path "$OUT/checkpoints/checkpoint_best.pt" --gen-subset test --beam 4 --batch-size 16 \
  --max-len-a 1 --max-len-b 4 > "$OUT/generate.txt" 2> "$OUT/generate.log"
awk -F'\t' '/^(S|T|H)-[012]\t/ {print $1 "\t" $NF}' "$OUT/generate.txt"
n=$(grep -c "^H-" "$OUT/generate.txt")
echo "$n of 40 test sentences translated; $(grep -h 'BLEU' "$OUT/generate.txt" | tail -1)"
echo "outputs: $OUT/generate.txt, checkpoints: $OUT/checkpoints, tensorboard: $OUT/tensorboard"
