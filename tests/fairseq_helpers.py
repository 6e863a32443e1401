"""Build small NODE-Transformers and batches in-process, the way fairseq's CLI does."""

import os
import subprocess
import sys
from dataclasses import replace

import torch
from fairseq import options, tasks
from fairseq.data import LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import node_transformer  # noqa: F401  (registers model and task)
from node_transformer.ode_block import ODEBlock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "node_transformer")
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

TINY = [
    "--encoder-embed-dim", "8", "--decoder-embed-dim", "8",
    "--encoder-ffn-embed-dim", "16", "--decoder-ffn-embed-dim", "16",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings",
]


def write_dicts(path):
    """A joined src/tgt dictionary, all fairseq's TranslationTask needs to set up."""
    os.makedirs(path, exist_ok=True)
    for lang in ("src", "tgt"):
        with open(os.path.join(path, f"dict.{lang}.txt"), "w") as f:
            f.writelines(f"{w} 10\n" for w in WORDS)
    return path


def build(data_dir, *flags, dtype=torch.float64):
    """(task, model, args) from command-line flags, as fairseq-train would build them."""
    argv = [data_dir, "--user-dir", USER_DIR, "--task", "node_translation",
            "--source-lang", "src", "--target-lang", "tgt",
            "--arch", "node_transformer", *TINY, *flags]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model).to(dtype)
    return task, model, args


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
