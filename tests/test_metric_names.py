"""The log's metric names: what the task emits is what the harness reads, by one definition."""

import argparse
import json
import subprocess
import sys

import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics
from fairseq.optim.sgd import SGD

from experiments import batch as run_all, fairseq_log, reports
from experiments.names import metric_names as harness_names
from fairseq_helpers import ROOT, batch, build, write_dicts
from node_transformer import metric_names as mn

PAIRS = [("w1 w2 w3 w4", "w5 w6 w7"), ("w3 w2", "w8 w9 w10 w11 w4")]


def fairseq_line(tag, stats):
    """A --log-format json line as fairseq writes it: train/valid keys carry their prefix."""
    prefix = "" if tag == "train_inner" else tag + "_"
    body = {"epoch": 1, **{prefix + k: str(v) for k, v in stats.items()}}
    return f"2026-11-28 05:47:55 | INFO | {tag} | {json.dumps(body)}"


def reduced(task, crit, logs, name):
    with metrics.aggregate(name) as agg:
        task.reduce_metrics(logs, crit)
        return {k: v for k, v in agg.get_smoothed_values().items() if v is not None}


def test_task_logs_what_the_harness_reads(tmp_path):
    task, model, _ = build(write_dicts(str(tmp_path)), "--node-encoder", "--node-decoder",
                           "--dropout", "0.0", "--node-kinetic-energy", "0.1",
                           "--node-jacobian-norm", "0.1")
    torch.manual_seed(0)
    opt = SGD(argparse.Namespace(lr=[0.1], momentum=0.0, weight_decay=0.0),
              [p for p in model.parameters() if p.requires_grad])
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    sample = batch(task, PAIRS)
    _, _, train_log = task.train_step(sample, model, crit, opt, update_num=1)
    _, _, valid_log = task.valid_step(sample, model, crit)
    # The producer: every name the harness knows is in the task's logs.
    assert set(mn.NFE_KEYS) | set(mn.COUNTERS) | set(mn.PENALTY_KEYS) | {mn.BATCHES} <= set(train_log)
    assert {k for k in mn.NFE_KEYS if k.endswith(mn.FORWARD)} | set(mn.VALID_COUNTERS) <= set(valid_log)
    train = reduced(task, crit, [train_log], "train")
    valid = reduced(task, crit, [valid_log], "valid")
    assert set(mn.NFE_KEYS) | set(mn.PENALTY_KEYS) <= set(train)
    # The consumers: parsed from fairseq's log lines, every column is filled from them.
    lines = [fairseq_line("train_inner", {**train, "num_updates": 1}),
             fairseq_line("valid", valid), fairseq_line("train", train)]
    parsed = fairseq_log.parse_log(lines)
    row = fairseq_log.epoch_rows(parsed)[0]
    for key in mn.NFE_KEYS:
        assert row[f"train_{key}"] == train[key] > 0
    for key in mn.PENALTY_KEYS:
        assert row[f"train_{key}"] == train[key] > 0
    assert row[f"valid_{mn.nfe_key('dec', mn.FORWARD)}"] == valid[mn.nfe_key("dec", mn.FORWARD)] > 0
    assert row[mn.SKIPPED] == 0 and all(row[k] == 0 for k in mn.POLICY_COUNTERS)
    stats = fairseq_log.nfe_stats(parsed["train_inner"])
    assert set(stats) == set(mn.NFE_KEYS)
    summary = {"nfe_train_inner": stats, mn.SKIPPED: 0}
    assert all(run_all.row_of(summary)[f"{k}_mean"] == train[k] for k in mn.NFE_KEYS)
    # One definition: the harness's names are the task's, whichever way they were loaded.
    assert {k: v for k, v in vars(harness_names).items() if k.isupper()} == \
        {k: v for k, v in vars(mn).items() if k.isupper()}
    assert reports.mn is harness_names


def test_reading_logs_does_not_import_fairseq():
    code = ("import sys; import experiments.reports, experiments.fairseq_log, experiments.batch; "
            "from experiments.names import metric_names as m; "
            "print(m.NFE_KEYS, 'fairseq' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("False") and "nfe_dec_fwd" in out
