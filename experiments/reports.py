"""Print a markdown table of experiment runs (summary.json, bleu_test.json) beside the study.

    python scripts/results_table.py runs/study/*-mini [runs/study-frozen/*-mini]

Losses are fairseq's, in bits per token: `valid loss` is label-smoothed (what the runs
optimise), `valid nll` is plain cross-entropy. NFE are the mean and the largest of fairseq's
train_inner values, each itself a mean over --log-interval updates.
"""

import json
import os
import sys

from .files import table
from .names import metric_names as mn


def fmt(x, digits=3):
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def nfe_cell(stats, key):
    s = stats.get(key)
    return "-" if not s else f"{s['mean']:.0f} / {s['max']:.0f}"


def row(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    bleu = None
    path = os.path.join(run_dir, "bleu_test.json")
    if os.path.exists(path):
        with open(path) as f:
            bleu = json.load(f).get("bleu")
    nfe = s.get("nfe_train_inner", {})
    study = s.get("study", {})
    name = os.path.basename(os.path.normpath(run_dir))
    return [name, fmt(s["updates"]), fmt(s["epochs"]), f"{s['wall_seconds'] / 60:.1f}",
            fmt(s["best_valid_loss"]), fmt(s.get("best_valid_nll_loss")),
            fmt(bleu, 1) if isinstance(bleu, float) else fmt(bleu),
            *(nfe_cell(nfe, k) for k in mn.NFE_KEYS),
            fmt(s.get(mn.SKIPPED)), fmt(study.get("best_valid_loss")),
            fmt(study.get("train_hours"))]


HEADER = ["run", "updates", "epochs", "wall (min)", "best valid loss", "valid nll",
          "test2016 BLEU", "NFE enc fwd (mean / max)", "NFE enc bwd", "NFE dec fwd", "NFE dec bwd",
          "skipped", "study: loss", "study: hours"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit("usage: results_table.py RUN_DIR [RUN_DIR ...]")
    rows = []
    for run_dir in argv:
        if not os.path.exists(os.path.join(run_dir, "summary.json")):
            print(f"results_table: warning: {run_dir}: no summary.json, skipped", file=sys.stderr)
            continue
        rows.append(row(run_dir))
    print("\n".join(table(HEADER, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
