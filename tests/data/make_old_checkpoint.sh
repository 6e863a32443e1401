#!/usr/bin/env bash
# How tests/data/old-checkpoint-ad52c09/ was made: a tiny model trained and saved by the code
# of commit ad52c09 (the last one with node_transformer/options.py, before NodeConfig), with
# its dictionaries and test split, so that tests load a checkpoint an older version wrote.
#   bash tests/data/make_old_checkpoint.sh      (needs the checkout's .venv or PYTHON_BIN_DIR)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN=${PYTHON_BIN_DIR:-$(cd "$HERE/../.." && pwd)/.venv/bin}
OLD=$(mktemp -d)/old WORK=$(mktemp -d)
git -C "$HERE" worktree add --detach "$OLD" ad52c09 -q
trap 'git -C "$HERE" worktree remove --force "$OLD"; rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1 PYTHONPATH="$OLD"
"$BIN/python" "$OLD/scripts/make_toy_data.py" "$WORK/raw" --train 300 --valid 10 --test 6 \
  --vocab 6 --max-len 4
"$BIN/fairseq-preprocess" --source-lang src --target-lang tgt --joined-dictionary --workers 1 \
  --trainpref "$WORK/raw/train" --validpref "$WORK/raw/valid" --testpref "$WORK/raw/test" \
  --destdir "$WORK/bin" > /dev/null
(cd "$OLD" && "$BIN/fairseq-train" "$WORK/bin" --user-dir "$OLD/node_transformer" \
  --task node_translation --arch node_transformer --node-encoder --node-decoder \
  --node-method rk4 --node-steps 2 --encoder-layers 1 --decoder-layers 1 \
  --encoder-embed-dim 8 --decoder-embed-dim 8 --encoder-ffn-embed-dim 16 \
  --decoder-ffn-embed-dim 16 --encoder-attention-heads 2 --decoder-attention-heads 2 \
  --share-all-embeddings --dropout 0.0 --optimizer adam --lr 1e-2 --max-tokens 400 \
  --max-epoch 3 --save-dir "$WORK/ckpt" --no-epoch-checkpoints --no-last-checkpoints \
  --no-save-optimizer-state --num-workers 0 --seed 1 > "$WORK/train.log")
# The old code's own translations of the test split: the new code must give the same.
(cd "$OLD" && "$BIN/fairseq-generate" "$WORK/bin" --user-dir "$OLD/node_transformer" \
  --task node_translation --path "$WORK/ckpt/checkpoint_best.pt" --gen-subset test --beam 2 \
  --batch-size 4 --max-len-b 6 2> /dev/null) | grep -E "^H-" | sort -V > "$WORK/generate.old.txt"
OUT="$HERE/old-checkpoint-ad52c09"
rm -rf "$OUT" && mkdir -p "$OUT"
cp "$WORK/generate.old.txt" "$OUT/"
cp "$WORK/ckpt/checkpoint_best.pt" "$OUT/model.pt"
cp "$WORK/bin"/dict.* "$WORK/bin"/test.* "$OUT/"
cp "$WORK/raw/test.src" "$OUT/test.raw.src"
cp "$WORK/raw/test.tgt" "$OUT/test.raw.tgt"
ls -la "$OUT"
