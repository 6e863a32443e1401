"""Build small NODE-Transformers and batches in-process, the way fairseq's CLI does."""

import json
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


def toy_data_bin(root, train: int, valid: int, test: int, env=None):
    """The generated toy task (scripts/make_toy_data.py, sentences of at most 6 words) under
    ``root``, binarized by fairseq-preprocess: (data-bin, raw text folder)."""
    raw, out = os.path.join(str(root), "raw"), os.path.join(str(root), "bin")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_toy_data.py"), raw,
                    "--train", str(train), "--valid", str(valid), "--test", str(test), "--max-len", "6"],
                   check=True, capture_output=True)
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
        "--trainpref", os.path.join(raw, "train"), "--validpref", os.path.join(raw, "valid"),
        "--testpref", os.path.join(raw, "test"), "--destdir", out, "--workers", "1", env=env)
    return out, raw


def train_argv(data, save_dir, model, *flags, lr, max_tokens, epochs, log=("--log-format", "json")):
    """fairseq-train's arguments for a small NODE-Transformer on toy data (Adam, inverse_sqrt
    with 10 warm-up updates, label-smoothed cross entropy, one seed); ``flags`` come after
    the model's, so they can override its settings."""
    return [data, "--user-dir", USER_DIR, "--task", "node_translation", "--arch", "node_transformer",
            *model, *flags, "--optimizer", "adam", "--lr", str(lr), "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", "10", "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", "0.1", "--max-tokens", str(max_tokens), "--max-epoch", str(epochs),
            "--save-dir", save_dir, "--no-epoch-checkpoints", *log, "--num-workers", "0", "--seed", "1"]


class CliRun:
    """One command of :func:`cli_runs`: its exit status (0, an int, or "not run") and output."""

    def __init__(self, name, status, seconds, out):
        self.name, self.status, self.seconds, self.out = name, status, seconds, out

    @property
    def ok(self):
        return self.status == 0

    def check(self):
        """The output, or an AssertionError that shows the command's last lines."""
        if not self.ok:
            raise AssertionError(f"{self.name} failed ({self.status}):\n{self.out[-3000:]}")
        return self.out


def cli_runs(out_dir, steps, timeout=900, env=None):
    """Run fairseq console commands one after another in one fresh process (see
    tests/fairseq_runs.py): ``steps`` are dicts name, tool, argv (and optionally needs: the name
    of a command that must have succeeded). Returns {name: CliRun}; a command the process did
    not reach (timeout, crash) has status "not reached"."""
    os.makedirs(out_dir, exist_ok=True)
    plan = os.path.join(out_dir, "plan.json")
    with open(plan, "w") as f:
        json.dump(list(steps), f, indent=1)
    try:
        proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "fairseq_runs.py"),
                               plan], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL)
        ended = f"the process ended ({proc.returncode}) before it:\n{proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired:
        ended = f"the process was stopped after {timeout} s before it"
    done = {}
    if os.path.exists(os.path.join(out_dir, "results.json")):
        with open(os.path.join(out_dir, "results.json")) as f:
            done = json.load(f)
    runs = {}
    for step in steps:
        name = step["name"]
        if name in done:
            with open(os.path.join(out_dir, name + ".log")) as f:
                runs[name] = CliRun(name, done[name]["status"], done[name]["seconds"], f.read())
        else:
            runs[name] = CliRun(name, "not reached", 0.0, ended)
    return runs
