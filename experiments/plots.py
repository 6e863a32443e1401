"""Plot runs of scripts/run_experiment.py like the figures of the study.

    plot_results.py RUN_DIR [RUN_DIR ...] --out DIR [--title-prefix TEXT]

Writes PNG files into DIR (NAME is a run dir's base name, e.g. 07-separated-aug1-tol1e-2-mini):
  best_valid_loss_epochs.png  best-so-far validation loss against epochs, one line per run
  best_valid_loss_hours.png   the same against fairseq's wall-clock training hours
  NAME_loss.png               train and validation loss per epoch of one run
  NAME_nfe.png                decoder/encoder NFE (forward and backward solves) of the
                              train_inner log lines against updates; only for runs that log NFE
Epoch values come from the run's epochs.csv, NFE from its train.log (parsed with
run_experiment.parse_log). Losses are fairseq's, in base 2 (bits per token). A run dir without
epochs.csv rows is skipped with a warning. The paths written are printed after the command line
that made them, which each PNG also carries in its "Description" metadata.
Exit status: 0, or 1 when no run could be plotted.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import sys
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import fairseq_log as rx  # noqa: E402
from .names import metric_names as mn  # noqa: E402

PROG = "plot_results"
LOSS_LABEL = "loss (base 2, bits/token)"
NFE_STYLE = {  # key: (panel, solve, line style)
    mn.nfe_key(tag, d): (side, solve, style)
    for side, tag in reversed(mn.SIDES)
    for d, solve, style in ((mn.FORWARD, "forward", "-"), (mn.BACKWARD, "backward", "--"))}


def warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def read_epochs(run_dir: str) -> List[Dict[str, float]]:
    """epochs.csv rows with every value as a float (nan where empty); [] if missing or empty."""
    try:
        with open(os.path.join(run_dir, "epochs.csv"), newline="", encoding="utf-8") as f:
            return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except OSError:
        return []


def read_nfe(run_dir: str) -> List[dict]:
    """The train_inner records of train.log that carry NFE counts; [] for a classic model."""
    try:
        with open(os.path.join(run_dir, "train.log"), encoding="utf-8", errors="replace") as f:
            inner = rx.parse_log(f)["train_inner"]
    except OSError:
        return []
    return [r for r in inner if isinstance(r.get("num_updates"), (int, float))
            and any(isinstance(r.get(k), (int, float)) for k in rx.NFE_KEYS)]


def series(rows: List[dict], xkey: str, ykey: str, xscale: float = 1.0):
    """(xs, ys) of the rows where both values are numbers."""
    pts = [(r[xkey] * xscale, r[ykey]) for r in rows
           if not (math.isnan(r.get(xkey, math.nan)) or math.isnan(r.get(ykey, math.nan)))]
    return [p[0] for p in pts], [p[1] for p in pts]


class Plotter:
    def __init__(self, out: str, title_prefix: str, command: str):
        self.out, self.prefix, self.command = out, title_prefix, command
        self.written: List[str] = []

    def title(self, ax, text: str) -> None:
        ax.set_title(f"{self.prefix} {text}".strip() if self.prefix else text)

    def save(self, fig, name: str) -> None:
        path = os.path.join(self.out, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata={"Description": self.command})
        plt.close(fig)
        self.written.append(path)

    def best_valid(self, runs: Dict[str, List[dict]]) -> None:
        for xkey, xscale, xlabel, fname in (
                ("epoch", 1.0, "epoch", "best_valid_loss_epochs.png"),
                ("wall_seconds", 1 / 3600, "wall-clock hours", "best_valid_loss_hours.png")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for name, rows in runs.items():
                xs, ys = series(rows, xkey, "best_valid_loss", xscale)
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
            ax.set_xlabel(xlabel)
            if xkey == "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("best validation " + LOSS_LABEL)
            self.title(ax, f"best validation loss against {xlabel}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
            self.save(fig, fname)

    def loss(self, name: str, rows: List[dict]) -> None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, label, color in (("train_loss", "train", "grey"),
                                  ("valid_loss", "valid", "tab:orange")):
            xs, ys = series(rows, "epoch", key)
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, color=color, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(LOSS_LABEL)
        self.title(ax, f"{name}: train and validation loss")
        ax.grid(alpha=0.3)
        ax.legend()
        self.save(fig, f"{name}_loss.png")

    def nfe(self, name: str, records: List[dict]) -> None:
        parts = [p for p in ("decoder", "encoder")
                 if any(isinstance(r.get(k), (int, float)) for r in records
                        for k, s in NFE_STYLE.items() if s[0] == p)]
        fig, axes = plt.subplots(len(parts), 1, figsize=(7, 3.2 * len(parts)), sharex=True,
                                 squeeze=False)
        for ax, part in zip(axes[:, 0], parts):
            for key, (p, direction, style) in NFE_STYLE.items():
                pts = [(r["num_updates"], r[key]) for r in records
                       if isinstance(r.get(key), (int, float))]
                if p == part and pts:
                    ax.plot(*zip(*pts), style, label=f"{key} ({direction})")
            ax.set_ylabel(f"{part} NFE")
            self.title(ax, f"{name}: {part} NFE per update")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        axes[-1, 0].set_xlabel("updates")
        self.save(fig, f"{name}_nfe.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs of run_experiment.py")
    p.add_argument("--out", required=True, metavar="DIR", help="where the PNG files go")
    p.add_argument("--title-prefix", default="", metavar="TEXT", help="put before every title")
    a = p.parse_args(argv)
    command = " ".join(shlex.quote(c) for c in [os.path.basename(sys.argv[0])] + sys.argv[1:])

    runs: Dict[str, List[dict]] = {}
    dirs: Dict[str, str] = {}
    for run_dir in a.run_dirs:
        name = os.path.basename(os.path.normpath(run_dir))
        rows = read_epochs(run_dir)
        if not rows:
            warn(f"{run_dir}: no epochs in epochs.csv (missing or empty), skipped")
        elif name in runs:
            warn(f"{run_dir}: a run named {name} is already plotted, skipped")
        else:
            runs[name], dirs[name] = rows, run_dir
    if not runs:
        print(f"{PROG}: error: no run to plot", file=sys.stderr)
        return 1

    os.makedirs(a.out, exist_ok=True)
    plotter = Plotter(a.out, a.title_prefix, command)
    plotter.best_valid(runs)
    for name, rows in runs.items():
        plotter.loss(name, rows)
        records = read_nfe(dirs[name])
        if records:
            plotter.nfe(name, records)
    print(f"# {command}")
    for path in plotter.written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
