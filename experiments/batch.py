"""Run every experiment of configs/ in order, one after the other, with run_experiment.py.

    run_all.py --scale mini --data-bin DIR [--out runs] [--force] [--only 01 07 ...]
               [--budget-minutes M] [--smoke] [--extra FAIRSEQ_ARGS...]

A run whose OUT/NAME-SCALE/summary.json exists with status "ok" is skipped (--force reruns
it from scratch); a run that exists without one (interrupted, failed) is started over.
A failed run does not stop the others. At the end, a table of the runs is printed and
written to OUT/results-SCALE.csv; the exit status is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys

from . import runner as rx
from .names import metric_names as mn
from .progress import Stages

SCRIPTS = os.path.join(rx.ROOT, "scripts")
DEC_FWD = mn.nfe_key(dict(mn.SIDES)["decoder"], mn.FORWARD)  # the NFE the summary prints

COLUMNS = ("config", "scale", "status", "stop_reason", "best_valid_loss", "best_valid_nll_loss",
           "study_best_valid_loss", "epochs", "updates", "wall_seconds",
           *(f"{k}_mean" for k in rx.NFE_KEYS), mn.SKIPPED)


def row_of(summary: dict) -> dict:
    row = {k: summary.get(k, "") for k in COLUMNS}
    row["study_best_valid_loss"] = summary.get("study", {}).get("best_valid_loss")
    for k in rx.NFE_KEYS:
        row[f"{k}_mean"] = summary.get("nfe_train_inner", {}).get(k, {}).get("mean", "")
    return row


def finished(a, cfg: dict) -> bool:
    """A run with summary.json status ok, kept unless --force."""
    path = os.path.join(a.out, rx.run_dir_name(cfg, a.scale, a.smoke), "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("status") == "ok" and not a.force
    except (OSError, ValueError):
        return False


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_all", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--scale", choices=rx.SCALES, required=True)
    p.add_argument("--data-bin", required=True, metavar="DIR")
    p.add_argument("--out", default="runs", metavar="DIR")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these configs")
    p.add_argument("--force", action="store_true", help="rerun runs that already have a summary")
    p.add_argument("--budget-minutes", type=float)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    return p


def read_summary(path: str):
    """A run's summary.json, or None where there is none yet."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_command(a, cfg: dict, run_dir: str) -> list:
    """The run_experiment.py command line of one config."""
    cmd = [sys.executable, os.path.join(SCRIPTS, "run_experiment.py"), cfg["name"],
           "--scale", a.scale, "--data-bin", a.data_bin, "--out", a.out]
    if os.path.exists(run_dir):
        cmd.append("--force")  # forced, failed or interrupted: start over
    if a.budget_minutes is not None:
        cmd += ["--budget-minutes", str(a.budget_minutes)]
    if a.smoke:
        cmd.append("--smoke")
    if a.quiet:
        cmd.append("--quiet")
    if a.extra:
        cmd += ["--extra"] + a.extra
    return cmd


def run_configs(a, configs: list, todo: list) -> tuple:
    """Run each config not finished yet, one after the other: (rows, failed names, progress)."""
    def expected_seconds(cfg):  # the budget, plus start-up and the last validation
        budget = rx.budget_of(cfg, a.scale, a.budget_minutes, a.smoke)
        return budget * 60 * 1.05 + 30 if budget else None

    stages = Stages("run_all", [cfg["name"] for cfg in todo], [expected_seconds(c) for c in todo])
    failed, rows = [], []
    for cfg in configs:
        run_dir = os.path.join(a.out, rx.run_dir_name(cfg, a.scale, a.smoke))
        summary_path = os.path.join(run_dir, "summary.json")
        done = read_summary(summary_path)
        if done and done.get("status") == "ok" and not a.force:
            print(f"run_all: {cfg['name']}: done already ({summary_path}), skipping", file=sys.stderr)
            rows.append(row_of(done))
            continue
        stages.start(stages.names.index(cfg["name"]), "starting")
        rc = subprocess.call(run_command(a, cfg, run_dir))
        summary = read_summary(summary_path)
        if summary is not None:
            rows.append(row_of(summary))
        if rc != 0:
            failed.append(cfg["name"])
            if rc == 130:
                print("run_all: interrupted", file=sys.stderr)
                break
    return rows, failed, stages


def write_table(a, rows: list, failed: list) -> None:
    """OUT/results-SCALE.csv, and the same table printed."""
    os.makedirs(a.out, exist_ok=True)
    table = os.path.join(a.out, f"results-{a.scale}{'-smoke' if a.smoke else ''}.csv")
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"{'config':40s} {'status':7s} {'best':>7s} {'study':>6s} {'updates':>8s} {'wall_s':>8s} "
          f"{DEC_FWD:>11s}")
    for r in rows:
        print(f"{r['config']:40s} {r['status']:7s} {str(r['best_valid_loss']):>7s} "
              f"{str(r['study_best_valid_loss']):>6s} {str(r['updates']):>8s} "
              f"{str(r['wall_seconds']):>8s} {str(r[DEC_FWD + '_mean']):>11s}")
    print(f"run_all: table in {table}" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)


def print_next(a, failed: list) -> None:
    """The command to run next: the same again, or the scoring, figures and table."""
    if failed:
        print("run_all: next: the same command again starts the failed runs over", file=sys.stderr)
    else:
        nxt = [os.path.join("scripts", "experiments", "all.sh"), "--scale", a.scale,
               "--data-bin", a.data_bin, "--out", a.out] + (["--smoke"] if a.smoke else [])
        print(f"run_all: next: {' '.join(shlex.quote(c) for c in nxt)}  (scores test2016, draws "
              "the figures and the table; the trained runs are kept)", file=sys.stderr)


def main(argv=None) -> int:
    a = arg_parser().parse_args(argv)
    try:
        paths = [rx.find_config(n) for n in a.only] if a.only else rx.config_paths()
        configs = [rx.load_config(path) for path in paths]
    except rx.RunError as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 2
    todo = [cfg for cfg in configs if not finished(a, cfg)]
    rows, failed, stages = run_configs(a, configs, todo)
    write_table(a, rows, failed)
    if todo:
        stages.finish()
    print_next(a, failed)
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
