"""Build small NODE-Transformers and batches in-process, the way fairseq's CLI does."""

import os
import subprocess
import sys
from dataclasses import replace

import torch
from fairseq.data import LanguagePairDataset

import node_transformer  # noqa: F401  (registers model and task)
from experiments import models
from experiments.configs import ROOT, USER_DIR  # noqa: F401
from node_transformer.ode_block import ODEBlock

BIN = os.path.dirname(sys.executable)
WORDS = [f"w{i}" for i in range(12)]

# The study's variants, as --node-* flags (the encoder of a NODE-decoder-only model: 1 layer).
VARIANTS = {
    "full": ["--node-encoder", "--node-decoder"],
    "separated": ["--node-encoder", "--node-decoder", "--node-separated-decoder"],
    "decoder-only": ["--node-decoder", "--encoder-layers", "1"],
    "separated-aug-time": ["--node-decoder", "--node-separated-decoder", "--encoder-layers", "1",
                           "--node-augment-dims", "1", "--node-time-dependent"],
}

SIZES = models.SIZES
TINY = [*SIZES["test"], "--share-all-embeddings"]


def write_dicts(path):
    """A joined src/tgt dictionary, all fairseq's TranslationTask needs to set up."""
    return models.write_dicts(path, WORDS, count=10)


def build(data_dir, *flags, dtype=torch.float64):
    """(task, model, args) from command-line flags, as fairseq-train would build them."""
    task, model, args = models.build_model(data_dir, *TINY, *flags)
    return task, model.to(dtype), args


def batch(task, pairs):
    """A collated fairseq sample from (source, target) strings."""
    d = task.source_dictionary
    src = [d.encode_line(s, add_if_not_exist=False).long() for s, _ in pairs]
    tgt = [d.encode_line(t, add_if_not_exist=False).long() for _, t in pairs]
    ds = LanguagePairDataset(src, [len(s) for s in src], d, tgt, [len(t) for t in tgt], d)
    return ds.collater([ds[i] for i in range(len(pairs))])


def set_solver(model, **changes):
    for m in model.modules():
        if isinstance(m, ODEBlock):
            m.solver = replace(m.solver, **changes)


def cli(tool, *args, timeout=600, check=True, env=None):
    """Run a fairseq console script of this environment; returns the CompletedProcess."""
    run_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([os.path.join(BIN, tool), *args], capture_output=True, text=True,
                          timeout=timeout, env=run_env, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def train_argv(data, save_dir, model, *flags, lr, max_tokens, epochs, log=("--log-format", "json")):
    """fairseq-train's arguments for a small NODE-Transformer on toy data (Adam, inverse_sqrt
    with 10 warm-up updates, label-smoothed cross entropy, one seed); ``flags`` come after
    the model's, so they can override its settings."""
    return [data, "--user-dir", USER_DIR, "--task", "node_translation", "--arch", "node_transformer",
            *model, *flags, "--optimizer", "adam", "--lr", str(lr), "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", "10", "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", "0.1", "--max-tokens", str(max_tokens), "--max-epoch", str(epochs),
            "--save-dir", save_dir, "--no-epoch-checkpoints", *log, "--num-workers", "0", "--seed", "1"]
