#!/usr/bin/env python3
"""How many function evaluations holding padded positions fixed saves on real batches.

Runs the forward solves of every batch of a split twice, with padded positions held fixed and
out of the error norm (what the plugin does) and with them free (what it did before), and
prints the NFE of each side. NFE counts do not depend on the machine's load.

  python scripts/padding_nfe.py data-bin/multi30k_en_de                  # untrained config 03 (mini)
  python scripts/padding_nfe.py data-bin/multi30k_en_de --checkpoint runs/x/checkpoint_best.pt
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

from experiments.configs import USER_DIR
# config 03 at mini scale: full NODE, dopri5 at tolerance 1e-3
UNTRAINED = ["--arch", "node_transformer", "--share-all-embeddings", "--node-encoder", "--node-decoder",
             "--node-rtol", "1e-3", "--node-atol", "1e-3", "--node-max-nfe", "0",
             "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
             "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
             "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]


def load(args):
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import node_transformer  # noqa: F401
    if args.checkpoint:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [args.checkpoint], arg_overrides={"data": args.data_bin})
        return task, models[0]
    torch.manual_seed(args.seed)
    argv = [args.data_bin, "--user-dir", USER_DIR, "--task", "node_translation", *UNTRAINED]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model)


@contextlib.contextmanager
def padding_free():
    """The plugin's blocks as they were before: no padding mask reaches the solver."""
    from node_transformer.ode_block import ODEBlock
    forward = ODEBlock.forward
    ODEBlock.forward = lambda self, h0, padding_mask=None, **inputs: forward(self, h0, **inputs)
    try:
        yield
    finally:
        ODEBlock.forward = forward


def nfe_of_split(task, model, split, max_tokens, max_batches) -> dict:
    from fairseq import utils
    from node_transformer.task import collect_nfe, reset_nfe
    task.load_dataset(split)
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=max_tokens,
                                  max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
                                  seed=1).next_epoch_itr(shuffle=False)
    totals: dict = {}
    pads = 0
    for i, sample in enumerate(itr):
        if i == max_batches:
            break
        reset_nfe(model)
        with torch.no_grad():
            model(**sample["net_input"])
        for k, v in collect_nfe(model, backward=False).items():
            totals[k] = totals.get(k, 0) + v
        pads += int(sample["net_input"]["src_tokens"].eq(task.source_dictionary.pad()).sum())
    totals["batches"], totals["source_pad_tokens"] = i if i == max_batches else i + 1, pads
    return totals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_bin")
    p.add_argument("--checkpoint", help="a trained model (default: an untrained config 03, mini)")
    p.add_argument("--split", default="valid")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if not os.path.isdir(args.data_bin):
        sys.exit(f"padding_nfe: error: no data-bin at {args.data_bin}")
    torch.set_num_threads(1)
    task, model = load(args)
    model.eval()
    held = nfe_of_split(task, model, args.split, args.max_tokens, args.max_batches)
    with padding_free():
        free = nfe_of_split(task, model, args.split, args.max_tokens, args.max_batches)
    print(f"{args.split}: {held['batches']} batches, {held['source_pad_tokens']} source pad tokens, "
          f"model: {args.checkpoint or 'untrained config 03 (mini), seed %d' % args.seed}")
    print("| side | NFE, pads free (before) | NFE, pads held (now) | saved |")
    print("|---|---|---|---|")
    for key in sorted(k for k in held if k.startswith("nfe_")):
        saved = 1 - held[key] / free[key] if free[key] else 0.0
        print(f"| {key} | {free[key]} | {held[key]} | {saved:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
