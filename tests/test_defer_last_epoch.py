"""Updates that take no optimizer step, and deferred batches at the run's end, through
fairseq-train: an update whose every batch was skipped or deferred is not counted (num_updates,
learning rate, checkpoints), deferred batches that no later epoch trains are named in a warning,
and a last epoch that trained nothing stops with one line before its checkpoint."""

import os
import re

import torch

from fairseq_helpers import cli
from test_cli import data_bin, log_records  # noqa: F401  (data_bin: fixture)
from test_training_conditions import ENV, NODE, train_args

import pytest

NEVER_TRAINED = re.compile(r"(\d+) deferred batches were never trained \((\d+) from epoch (\d+)\): "
                           r"the run ends here \(--max-epoch (\d+)\)")


def _updates(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return state["optimizer_history"][-1]["num_updates"]


def test_a_last_epoch_that_deferred_every_batch_stops_with_one_line(data_bin, tmp_path):
    # A budget no batch passes, --max-epoch 1: the deferred batches have no next epoch. The
    # run used to say "done training", exit 0 and write checkpoint_best.pt (loss inf) at
    # "5 updates" although no optimizer step was taken.
    data, _ = data_bin
    save = tmp_path / "ckpt"
    proc = cli("fairseq-train", *train_args(data, str(save), *NODE, "--node-max-nfe", "8",
                                            "--node-on-budget", "defer", epochs=1), env=ENV, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"node_transformer: error: epoch 1 trained nothing: a solve failed in every "
                        r"update \(--node-on-budget defer\), and no later epoch trains its (\d+) "
                        r"deferred batches \(--max-epoch 1\); stopped before saving a checkpoint of "
                        r"it: raise --node-max-nfe or use --node-on-budget fixed-step; no checkpoint "
                        rf"in {re.escape(str(save))}", last), last
    log = proc.stdout + proc.stderr
    deferred = len(re.findall(r"\| deferred batch of \d+ sentences", log))
    warned = NEVER_TRAINED.search(log)
    assert deferred > 0 and warned
    assert warned.groups() == (str(deferred), str(deferred), "1", "1")
    assert {r["num_updates"] for r in log_records(proc, "train_inner")} == {"0"}  # none counted
    assert "Traceback" not in proc.stderr
    assert not list(save.glob("*.pt"))


@pytest.mark.parametrize("policy", ["skip", "defer"])
def test_updates_without_a_step_are_not_counted(data_bin, tmp_path, policy):
    # 26 evaluations let forwards pass and stop the backward of some batches: those updates
    # take no step. They used to advance num_updates and the learning-rate schedule (warm-up),
    # and the checkpoint claimed them.
    data, _ = data_bin
    save = tmp_path / "ckpt"
    proc = cli("fairseq-train", *train_args(data, str(save), *NODE, "--node-max-nfe", "26",
                                            "--node-on-budget", policy, epochs=1), env=ENV)
    # One update per record (--log-interval 1); fairseq logs no record at step 0, so a first
    # update without a step is missing, which changes no count below.
    inner = log_records(proc, "train_inner")
    failed = [int(r.get(f"node_{'deferred' if policy == 'defer' else 'skipped'}", 0)) for r in inner]
    stepped = len(inner) - sum(failed)
    assert 0 < stepped < len(inner), failed
    counts = [int(r["num_updates"]) for r in inner]
    assert counts == [sum(1 - f for f in failed[:i + 1]) for i in range(len(inner))]
    for before, after, f in zip(inner, inner[1:], failed[1:]):
        if f:  # the schedule stays where it was
            assert after["lr"] == before["lr"]
    assert int(log_records(proc, "train")[0]["train_num_updates"]) == stepped
    assert _updates(save / "checkpoint_last.pt") == stepped
    log = proc.stdout + proc.stderr
    assert f"(epoch 1 @ {stepped} updates" in log
    warned = NEVER_TRAINED.search(log)
    if policy == "defer":  # the last epoch's deferred batches: named, never trained
        n = str(int(log_records(proc, "train")[0]["train_node_deferred"]))
        assert warned and warned.groups() == (n, n, "1", "1")
    else:
        assert not warned


def test_two_idle_epochs_say_which_checkpoints_are_on_disk(data_bin, tmp_path):
    # Under defer an idle epoch 1 is let through (its batches come back in epoch 2) and its
    # checkpoint is written at 0 updates; epoch 2 idle too stops the run. The one line used to
    # say "stopped before saving a checkpoint" and leave the untrained checkpoint_best.pt unnamed.
    data, _ = data_bin
    save = tmp_path / "ckpt"
    proc = cli("fairseq-train", *train_args(data, str(save), *NODE, "--node-max-nfe", "8",
                                            "--node-on-budget", "defer", epochs=3), env=ENV, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("node_transformer: error: epochs 1 and 2 trained nothing"), last
    names = sorted(p.name for p in save.glob("*.pt"))
    assert names and all(_updates(save / n) == 0 for n in names)
    assert last.endswith(f"; in {save}: {', '.join(names)} from the end of epoch 1 at 0 updates (an untrained model)"), last
