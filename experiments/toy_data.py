#!/usr/bin/env python3
"""Write a small generated translation task (no download): the embedded default data.

Source sentences are random strings over a small vocabulary; the target translates each
word through a fixed lexicon and reverses the word order, so a model must learn a lexicon
and to attend across the sentence. Deterministic for a given --seed.

    python scripts/make_toy_data.py OUTDIR  ->  OUTDIR/{train,valid,test}.{src,tgt}
"""

import argparse
import os
import random
import sys

from experiments.files import replaced_atomically


def make_pairs(n, rng, vocab, min_len, max_len):
    lexicon = {w: w.upper() + "x" for w in vocab}
    for _ in range(n):
        words = [rng.choice(vocab) for _ in range(rng.randint(min_len, max_len))]
        yield " ".join(words), " ".join(lexicon[w] for w in reversed(words))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir")
    p.add_argument("--train", type=int, default=2000, help="training pairs (default 2000)")
    p.add_argument("--valid", type=int, default=100)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--vocab", type=int, default=24, help="source words (default 24)")
    p.add_argument("--min-len", type=int, default=2)
    p.add_argument("--max-len", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if not (1 <= a.min_len <= a.max_len) or a.vocab < 2 or min(a.train, a.valid, a.test) < 1:
        p.error("need 1 <= --min-len <= --max-len, --vocab >= 2 and at least one pair per split")
    rng = random.Random(a.seed)
    vocab = [f"w{chr(97 + i % 26)}{i // 26}" for i in range(a.vocab)]
    os.makedirs(a.outdir, exist_ok=True)
    for split, n in (("train", a.train), ("valid", a.valid), ("test", a.test)):
        pairs = list(make_pairs(n, rng, vocab, a.min_len, a.max_len))
        for side, idx in (("src", 0), ("tgt", 1)):
            path = os.path.join(a.outdir, f"{split}.{side}")
            with replaced_atomically(path) as f:
                f.writelines(pair[idx] + "\n" for pair in pairs)
    print(f"wrote {a.train}/{a.valid}/{a.test} pairs to {a.outdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
