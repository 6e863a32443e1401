"""Bad input through fairseq's tools ends in one line naming the problem and a non-zero status,
not a traceback, and loses nothing already written: a missing data directory or split, a
truncated checkpoint (generate and resume), resuming from another architecture's or another
--node-block's checkpoint, an old checkpoint with several blocks per side. In
fairseq-interactive a line over the model's positions is named and skipped, the others are
translated."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from fairseq_helpers import USER_DIR, cli
from test_cli import data_bin  # noqa: F401  (fixture)
from test_training_conditions import ENV, train_args

# Two pre-norm encoder blocks of one rk4 step (fast, and the shape of the old format below),
# at most 12 source positions.
SHAPE = ["--node-encoder", "--node-dynamics", "prenorm", "--encoder-layers", "2",
         "--max-source-positions", "12", "--max-target-positions", "12"]
FLAGS = [*SHAPE, "--node-method", "rk4", "--node-steps", "1", "--node-backprop", "direct"]


@pytest.fixture(scope="module")
def trained(data_bin, tmp_path_factory):  # noqa: F811
    data, raw = data_bin
    save = tmp_path_factory.mktemp("bad-input") / "ckpt"
    cli("fairseq-train", *train_args(data, str(save), *FLAGS, "--no-save-optimizer-state"), env=ENV)
    return data, raw, save / "checkpoint_last.pt"


def one_line(proc, pattern):
    """The run failed with exactly one line of its own at the end, and no traceback."""
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(f"node_transformer: error: {pattern}", last), last
    assert "Traceback" not in proc.stderr + proc.stdout


def generate(data, path, *flags):
    return cli("fairseq-generate", data, "--user-dir", USER_DIR, "--task", "node_translation",
               "--path", str(path), "--gen-subset", "test", "--beam", "2", "--max-len-b", "5",
               *flags, env=ENV, check=False)


def resume(data, save, *flags):
    return cli("fairseq-train", *train_args(data, str(save), *flags, epochs=2), env=ENV, check=False)


@pytest.mark.parametrize("tool", ["fairseq-train", "fairseq-generate"])
def test_a_missing_data_directory(trained, tmp_path, tool):
    _, _, checkpoint = trained
    missing = tmp_path / "no-such-bin"
    if tool == "fairseq-train":
        proc = resume(str(missing), tmp_path / "ckpt", *FLAGS)
    else:
        proc = generate(str(missing), checkpoint)
    one_line(proc, re.escape(f"data directory {str(missing)!r} does not exist (the --destdir of "
                             "fairseq-preprocess)"))
    assert not list(tmp_path.glob("ckpt/*"))  # fairseq-train makes --save-dir first: left empty


def test_a_missing_split(trained):
    data, _, checkpoint = trained
    one_line(generate(data, checkpoint, "--gen-subset", "tset"),
             re.escape(f"Dataset not found: tset ({data}): no tset.* files there") + ".*")


def _truncated(checkpoint, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(checkpoint.read_bytes()[:20000])
    return path.read_bytes()


def test_a_truncated_checkpoint_in_generate(trained, tmp_path):
    data, _, checkpoint = trained
    broken = tmp_path / "broken.pt"
    _truncated(checkpoint, broken)
    one_line(generate(data, broken), re.escape(f"{broken} is not a checkpoint torch can read "
                                               "(truncated or partly written?): ") + ".+")


def test_a_truncated_checkpoint_to_resume_from(trained, tmp_path):
    data, _, checkpoint = trained
    last = tmp_path / "ckpt" / "checkpoint_last.pt"
    before = _truncated(checkpoint, last)
    one_line(resume(data, last.parent, *FLAGS),
             re.escape(f"{last} is not a checkpoint torch can read ") + ".+")
    assert os.listdir(last.parent) == ["checkpoint_last.pt"] and last.read_bytes() == before


@pytest.mark.parametrize("flags, named", [
    # fairseq's own architecture from a NODE checkpoint
    (["--arch", "transformer", "--encoder-layers", "2"],
     r"it was written by --arch node_transformer; the checkpoint does not fit this model, .*"
     r"it holds parameters this model does not have \(\d+: encoder\.layers\.0\.block\b.*"),
    # another block: the learned RK2 block has a gate the ODE block lacks
    ([*SHAPE, "--node-block", "rk2-gated"],
     r"the checkpoint does not fit this model, .*it lacks parameters of this model "
     r"\(\d+: encoder\.layers\.0\.block\.gate\b.*"),
])
def test_resuming_from_a_checkpoint_of_other_flags(trained, tmp_path, flags, named):
    data, _, checkpoint = trained
    last = tmp_path / "ckpt" / "checkpoint_last.pt"
    last.parent.mkdir()
    shutil.copy(checkpoint, last)
    proc = resume(data, last.parent, *flags)
    one_line(proc, re.escape(f"cannot resume from {last}: ") + named)
    assert os.listdir(last.parent) == ["checkpoint_last.pt"] and last.read_bytes() == checkpoint.read_bytes()


def test_an_old_checkpoint_with_several_blocks_per_side(trained, tmp_path):
    # Written before the side's norm moved after its last block: each pre-norm block held its
    # own (layers.N.final_norm). The plugin refuses it with its own message, which came after
    # a traceback.
    data, _, checkpoint = trained
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = state["model"]
    for name in ("weight", "bias"):
        model[f"encoder.layers.1.final_norm.{name}"] = model.pop(f"encoder.layer_norm.{name}")
        model[f"encoder.layers.0.final_norm.{name}"] = model[f"encoder.layers.1.final_norm.{name}"].clone()
    old = tmp_path / "old.pt"
    torch.save(state, old)
    one_line(generate(data, old), re.escape(f"cannot load {old}: encoder.layers: this checkpoint "
                                            "normalises after each of its 2 pre-norm ODE blocks") + ".*")


def test_interactive_skips_a_line_over_the_models_positions(trained):
    data, raw, checkpoint = trained
    lines = open(os.path.join(raw, "test.src")).read().splitlines()[:3]
    lines[1] = " ".join([lines[1]] * 6)  # over 12 positions
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "fairseq-interactive"), data,
         "--user-dir", USER_DIR, "--task", "node_translation", "--source-lang", "src",
         "--target-lang", "tgt", "--path", str(checkpoint), "--beam", "2", "--max-len-b", "5"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300,
        env=dict(os.environ, **ENV))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.findall(r"^H-(\d+)\t", proc.stdout, re.M) == ["0", "2"]  # the line after it too
    n = len(lines[1].split()) + 1
    assert re.search(rf"input line 2 \(S-1\) has {n} tokens with end of sentence, more than the "
                     r"model's 12 source positions: skipped", proc.stdout + proc.stderr)
