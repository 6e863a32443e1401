"""Side by side, in one run: the classic 1-layer Transformer, the study's best NODE
configuration and this project's best, on the same data under one budget rule; then peak
memory against NFE for adjoint and direct backprop.

    benchmark.py --data-bin DIR [--out runs/benchmark] [--budget-minutes 10] [--node-budget-factor 3]
                 [--json docs/benchmark.json] [--only NAME ...] [--skip-memory] [--smoke]
    benchmark.py --render docs/benchmark.json [--figure PNG]   (the results page's tables, figure)

Each configuration trains with run_experiment.py (mini scale, one after the other: run
nothing else on the machine meanwhile) into OUT/NAME. The classic trains for the budget; each
NODE configuration then gets the goal's allowance, --node-budget-factor (default 3) times the
classic's training time to its best loss, so that "reached within 3x" can be observed at all.
The table and the JSON give, per configuration: best valid loss; seconds_to_classic_loss, the
training time at the first validation whose loss is at or below the classic's best (null if
never); target tokens per second; mean forward and backward NFE per update (encoder + decoder;
null without ODE blocks); peak memory (the training process's peak RSS, or max allocated on a
GPU). The goal of issue 5: best_valid_loss <= the classic's and seconds_to_classic_loss <= 3 x
the classic's own time to its best.

Memory against NFE: one training step of a full study-form NODE-Transformer (mini
dimensions, a fixed synthetic batch) at tolerances 1e-2, 1e-3, 1e-4, with adjoint and with
direct backprop, each in a fresh process; the peak is measured around the step alone (Linux
VmHWM reset through /proc/self/clear_refs; torch.cuda peak stats on a GPU).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

from . import runner as rx
from .files import table, write_json
from .models import SIZES, build_model, write_dicts
from .names import metric_names as mn
from .progress import Stages, bar

ROOT = rx.ROOT
SCRIPTS = os.path.join(ROOT, "scripts")

PROG = "benchmark"
GOAL_TIME_RATIO = 3.0

# name -> (config of configs/, extra fairseq flags). The classic comes first: the others
# are measured against its best loss.
CONFIGS = {
    # config 02 at the project-best's peak learning rate: its own 2e-3 would be the easier
    # reference (valid loss at 260 updates: 7.58 bits at 2e-3, 6.71 at 4e-3; RESULTS.md).
    "classic-1layer": ("02", ["--lr", "4e-3"]),
    "study-best": ("07", []),  # separated NODE decoder, aug 1, tol 1e-2 (study's form)
    # full NODE, pre-norm dynamics with fairseq's initialisation, one midpoint step, direct
    # backprop, twice the classic's peak learning rate (chosen by 260-update probes, RESULTS.md)
    "project-best": ("04", [
        "--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method", "midpoint",
        "--node-steps", "1", "--node-backprop", "direct", "--lr", "4e-3"]),
}
CLASSIC = "classic-1layer"
TOLERANCES = (1e-2, 1e-3, 1e-4)


# --------------------------------------------------------------------------------------------
# training runs


def run_config(name: str, args, budget_minutes: float) -> dict:
    config, extra = CONFIGS[name]
    cmd = [sys.executable, os.path.join(SCRIPTS, "run_experiment.py"), config, "--scale", "mini",
           "--data-bin", args.data_bin, "--out", args.out, "--run-name", name, "--force",
           "--quiet", "--budget-minutes", f"{budget_minutes:.4g}"]
    if args.smoke:
        cmd.append("--smoke")
    if extra:
        cmd += ["--extra", *extra]
    print(f"{PROG}: {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL)
    summary_path = os.path.join(args.out, name, "summary.json")
    if not os.path.exists(summary_path):
        raise SystemExit(f"{PROG}: error: {name}: run_experiment.py wrote no summary (exit {proc.returncode})")
    with open(summary_path, encoding="utf-8") as f:
        return json.load(f)


def read_epochs(run_dir: str) -> List[dict]:
    with open(os.path.join(run_dir, "epochs.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _float(v) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def seconds_to_loss(epochs: List[dict], target: float) -> Optional[float]:
    """Training time (fairseq's wall) at the first validation with loss <= target."""
    for row in epochs:
        loss, wall = _float(row.get("valid_loss")), _float(row.get("wall_seconds"))
        if loss is not None and wall is not None and loss <= target:
            return wall
    return None


def node_budget_minutes(classic_epochs: List[dict], classic_best: Optional[float], factor: float,
                        fallback_minutes: float) -> float:
    """factor x the classic's training time to its best loss; factor x its budget when its
    run recorded no validation (nothing better to go by)."""
    t = seconds_to_loss(classic_epochs, classic_best) if classic_best is not None else None
    return factor * (t / 60.0 if t else fallback_minutes)


def nfe_per_update(summary: dict, direction: str) -> Optional[float]:
    means = [v["mean"] for k, v in summary.get("nfe_train_inner", {}).items() if k.endswith("_" + direction)]
    return round(sum(means), 1) if means else None


def row_of(name: str, summary: dict, epochs: List[dict], classic_best: Optional[float]) -> dict:
    peak = summary.get(mn.CUDA_PEAK) or summary.get("peak_rss_mb")
    return {
        "name": name,
        "best_valid_loss": summary.get("best_valid_loss"),
        "seconds_to_classic_loss": (seconds_to_loss(epochs, classic_best)
                                    if classic_best is not None else None),
        "tokens_per_second": summary.get("tokens_per_second"),
        "nfe_forward": nfe_per_update(summary, mn.FORWARD),
        "nfe_backward": nfe_per_update(summary, mn.BACKWARD),
        "peak_memory_mb": peak,
        "peak_memory_kind": "cuda_max_allocated" if summary.get(mn.CUDA_PEAK) else "rss",
        "updates": summary.get("updates"),
        "epochs": summary.get("epochs"),
        "stop_reason": summary.get("stop_reason"),
        mn.SKIPPED: summary.get(mn.SKIPPED),
        "command_line": summary.get("command_line"),
    }


def verdict(rows: List[dict]) -> Dict[str, object]:
    classic = next(r for r in rows if r["name"] == CLASSIC)
    t_classic = classic["seconds_to_classic_loss"]
    out = {}
    for r in rows:
        if r["name"] == CLASSIC:
            continue
        t = r["seconds_to_classic_loss"]
        ratio = round(t / t_classic, 2) if t is not None and t_classic else None
        out[r["name"]] = {
            "time_ratio_to_classic_loss": ratio,
            "tokens_per_second_ratio": (round(r["tokens_per_second"] / classic["tokens_per_second"], 3)
                                        if r["tokens_per_second"] and classic["tokens_per_second"] else None),
            "goal_met": bool(ratio is not None and ratio <= GOAL_TIME_RATIO
                             and r["best_valid_loss"] <= classic["best_valid_loss"]),
        }
    return out


# --------------------------------------------------------------------------------------------
# memory against NFE


def _rss_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Give memory freed by the warm-up step back to the OS (glibc keeps it otherwise), so
    that the step measured next shows its whole footprint in the resident set."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_probe(backprop: str, tol: float, smoke: bool) -> dict:
    """One training step in this process; peak memory of the step over the memory before it."""
    import tempfile

    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        write_dicts(d, (f"w{i}" for i in range(1000)))
        _, model, _ = build_model(
            d, "--share-all-embeddings", "--node-encoder", "--node-decoder", "--node-rtol", str(tol),
            "--node-atol", str(tol), "--node-max-nfe", "0", "--node-backprop", backprop,
            "--dropout", "0.0", *SIZES["tiny" if smoke else "mini"])
    from node_transformer.ode_block import ode_blocks
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model.to(device).train()
    bsz, src_len, tgt_len = (4, 6, 6) if smoke else (64, 20, 20)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 1000, (bsz, src_len), generator=g).to(device)
    prev = torch.randint(4, 1000, (bsz, tgt_len), generator=g).to(device)
    lengths = torch.full((bsz,), src_len, dtype=torch.long, device=device)

    def step():
        out, _ = model(src, lengths, prev)
        out.float().logsumexp(-1).sum().backward()

    step()  # first step: allocator caches and lazy initialisation out of the way
    model.zero_grad(set_to_none=True)
    blocks = ode_blocks(model)
    for b in blocks:
        b.reset_record()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM, the peak resident set, to the current one
        except OSError:
            pass
        base = _rss_kb("VmRSS")
    start = time.time()
    step()
    seconds = time.time() - start
    nfe_f = sum(b.nfe_record().nfe_forward for b in blocks)
    nfe_b = sum(b.nfe_record().nfe_backward for b in blocks)
    if cuda:
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        kind = "cuda_max_allocated"
    else:
        hwm = _rss_kb("VmHWM")
        peak_mb = (hwm - base) / 1024 if hwm is not None and base is not None else None
        kind = "rss_vmhwm"
    return {"backprop": backprop, "tol": tol, "nfe_forward": nfe_f, "nfe_backward": nfe_b,
            "step_peak_mb": None if peak_mb is None else round(peak_mb, 1),
            "memory_kind": kind, "step_seconds": round(seconds, 2)}


def memory_vs_nfe(smoke: bool) -> List[dict]:
    rows = []
    probes = bar(total=2 * len(TOLERANCES), desc="memory probes", unit="probe")
    for backprop in ("adjoint", "direct"):
        for tol in TOLERANCES:
            cmd = [sys.executable, os.path.join(SCRIPTS, "benchmark.py"), "--memory-probe", backprop, str(tol)]
            if smoke:
                cmd.append("--smoke")
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise SystemExit(f"{PROG}: error: memory probe {backprop} {tol} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{PROG}: memory {backprop:7s} tol {tol:g}: NFE {row['nfe_forward']}+{row['nfe_backward']}, "
                  f"step peak {row['step_peak_mb']} MB", file=sys.stderr, flush=True)
            rows.append(row)
            probes.update(1)
    probes.close()
    return rows


# --------------------------------------------------------------------------------------------


MEMORY_COLUMNS = ("backprop", "tol", "nfe_forward", "nfe_backward", "step_peak_mb")


def _memory_cells(m: dict, peak) -> list:
    return [m["backprop"], f"{m['tol']:g}", m["nfe_forward"], m["nfe_backward"], peak(m["step_peak_mb"])]


def print_table(rows: List[dict], verdicts: dict, memory: List[dict]) -> None:
    cols = ("name", "best_valid_loss", "seconds_to_classic_loss", "tokens_per_second",
            "nfe_forward", "nfe_backward", "peak_memory_mb", "updates")
    print("\n".join(table(cols, [["-" if r[c] is None else r[c] for c in cols] for r in rows],
                          markdown=False)))
    for name, v in verdicts.items():
        print(f"{name}: time to the classic's best loss = {v['time_ratio_to_classic_loss']} x the classic's; "
              f"throughput {v['tokens_per_second_ratio']} x; goal met: {v['goal_met']}")
    if memory:
        print("\n".join(table(MEMORY_COLUMNS, [_memory_cells(m, str) for m in memory], markdown=False)))


def markdown(doc: dict) -> str:
    """The results page's tables, from a benchmark JSON."""
    def f(v):
        return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))
    lines = []
    if doc.get("node_budget_minutes") is not None:
        lines += [f"Training budgets: classic {doc['budget_minutes']:g} min; each NODE configuration "
                  f"{doc['node_budget_minutes']:g} min ({doc['node_budget_factor']:g} x the classic's "
                  "time to its best loss).", ""]
    header = ("configuration", "best valid loss", "s to classic's best", "time ratio", "tokens/s",
              "NFE fwd / update", "NFE bwd / update", "peak memory (MB)", "updates", "goal met")
    cells = []
    for r in doc["configurations"]:
        v = doc["verdict"].get(r["name"], {})
        cells.append([r["name"], f(r["best_valid_loss"]), f(r["seconds_to_classic_loss"]),
                      f(v.get("time_ratio_to_classic_loss", 1.0 if r["name"] == CLASSIC else None)),
                      f(r["tokens_per_second"]), f(r["nfe_forward"]), f(r["nfe_backward"]),
                      f(r["peak_memory_mb"]), f(r["updates"]), f(v.get("goal_met")) if v else "reference"])
    lines += table(header, cells)
    if doc.get("memory_vs_nfe"):
        header = ("backprop", "tolerance", "NFE forward", "NFE backward", "peak memory of the step (MB)")
        lines += [""] + table(header, [_memory_cells(m, f) for m in doc["memory_vs_nfe"]])
    return "\n".join(lines)


def memory_figure(doc: dict, path: str) -> None:
    """Peak memory of one training step against its NFE (forward + backward), per backprop."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for backprop, marker in (("adjoint", "o"), ("direct", "s")):
        pts = sorted((m["nfe_forward"] + m["nfe_backward"], m["step_peak_mb"], m["tol"])
                     for m in doc["memory_vs_nfe"] if m["backprop"] == backprop and m["step_peak_mb"] is not None)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=backprop)
        for x, y, tol in pts:
            ax.annotate(f"{tol:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("NFE of the step (forward + backward)")
    ax.set_ylabel("peak memory of the step (MB)")
    ax.set_title("memory against NFE (labels: tolerance)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--data-bin", metavar="DIR")
    p.add_argument("--out", default=os.path.join("runs", "benchmark"), metavar="DIR")
    p.add_argument("--budget-minutes", type=float, default=10.0, metavar="M",
                   help="training budget of the classic (default 10)")
    p.add_argument("--node-budget-factor", type=float, default=GOAL_TIME_RATIO, metavar="F",
                   help="NODE configurations train for F x the classic's time to its best loss "
                        f"(default {GOAL_TIME_RATIO:g}, the goal's allowance)")
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "benchmark.json"), metavar="FILE")
    p.add_argument("--only", nargs="+", choices=sorted(CONFIGS), metavar="NAME",
                   help=f"a subset of: {', '.join(CONFIGS)} ({CLASSIC} is always run)")
    p.add_argument("--skip-memory", action="store_true", help="no memory-against-NFE probes")
    p.add_argument("--smoke", action="store_true", help="tiny models and budgets: checks the pipeline")
    p.add_argument("--render", metavar="FILE", help="print a benchmark JSON as markdown tables and exit")
    p.add_argument("--figure", metavar="PNG", help="with --render: also plot memory against NFE")
    p.add_argument("--memory-probe", nargs=2, metavar=("BACKPROP", "TOL"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.render:
        with open(a.render, encoding="utf-8") as f:
            doc = json.load(f)
        print(markdown(doc))
        if a.figure:
            memory_figure(doc, a.figure)
        return 0
    if a.memory_probe:
        print(json.dumps(memory_probe(a.memory_probe[0], float(a.memory_probe[1]), a.smoke)))
        return 0
    if not a.data_bin or not os.path.isdir(a.data_bin):
        p.error(f"--data-bin {a.data_bin!r}: data-bin directory not found")
    if not a.budget_minutes > 0:
        p.error("--budget-minutes must be > 0")
    if not a.node_budget_factor > 0:
        p.error("--node-budget-factor must be > 0")
    names = [n for n in CONFIGS if n == CLASSIC or not a.only or n in a.only]
    started = datetime.datetime.now().astimezone()
    # time left: the budgets (plus start-up and the last validation); the NODE runs' budget
    # is known once the classic has run, its upper bound (factor x its budget) until then
    stages = Stages(PROG, names, [(a.budget_minutes * (1 if n == CLASSIC else a.node_budget_factor))
                                  * 60 + 30 for n in names])
    stages.start(0, "training")
    summaries = {CLASSIC: run_config(CLASSIC, a, a.budget_minutes)}
    classic_best = summaries[CLASSIC].get("best_valid_loss")
    node_minutes = node_budget_minutes(read_epochs(os.path.join(a.out, CLASSIC)), classic_best,
                                       a.node_budget_factor, a.budget_minutes)
    for i, n in enumerate(names):
        if n != CLASSIC:
            stages.expected[i] = node_minutes * 60 + 30
            stages.start(i, f"training for {node_minutes:.3g} min")
            summaries[n] = run_config(n, a, node_minutes)
    rows = [row_of(n, summaries[n], read_epochs(os.path.join(a.out, n)), classic_best) for n in names]
    verdicts = verdict(rows)
    memory = [] if a.skip_memory else memory_vs_nfe(a.smoke)
    print_table(rows, verdicts, memory)
    doc = {
        "configurations": rows,
        "verdict": verdicts,
        "memory_vs_nfe": memory,
        "budget_minutes": a.budget_minutes,
        "node_budget_factor": a.node_budget_factor,
        "node_budget_minutes": round(node_minutes, 3),
        "smoke": a.smoke,
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "benchmark.py", *(argv or sys.argv[1:])]),
        "machine": rx.machine_info(),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    write_json(a.json, doc)
    print(f"{PROG}: wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
