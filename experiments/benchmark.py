"""Side by side, in one run: the classic 1-layer Transformer, the study's best NODE
configuration and this project's best, on the same data under one budget rule; then peak
memory against NFE for adjoint and direct backprop.

    benchmark.py --data-bin DIR [--out runs/benchmark] [--budget-minutes 10] [--node-budget-factor 3]
                 [--json docs/benchmark.json] [--only NAME ...] [--skip-memory] [--smoke]
                 [--seeds S ...] [--at-minutes M ...] [--busy-cores C] [--figure-time PNG]
    benchmark.py --render docs/benchmark.json [--figure PNG] [--figure-time PNG]
                 (the results page's tables, figures)

Each configuration trains with run_experiment.py (mini scale, one after the other: run
nothing else on the machine meanwhile) into OUT/NAME (OUT/NAME-seedS with --seeds: each
configuration once per seed, fairseq's --seed S; without, the configs' own seed). The classic
trains for the budget; each NODE configuration then gets the goal's allowance,
--node-budget-factor (default 3) times the classic's (same seed's) training time to its best
loss, so that "reached within 3x" can be observed at all. The table and the JSON give, per
configuration and seed: best valid loss; seconds_to_classic_loss, the training time at the
first validation whose loss is at or below the classic's best (null if never); target tokens
per second; mean forward and backward NFE per update (encoder + decoder; null without ODE
blocks); peak memory (the training process's peak RSS, or max allocated on a GPU); the best
valid loss reached by equal training times (--at-minutes, default 5 10 15 20 30; null where
the run was shorter); the valid-loss curve against training time (--figure-time plots all
configurations in one figure). The goal of issue 5: best_valid_loss <= the classic's and
seconds_to_classic_loss <= 3 x the classic's own time to its best, judged per seed.

Machine load (experiments/machine_load.py, Linux /proc): before each configuration, the CPU
time other processes used over a short quiet check; during its training, sampled every
--load-interval seconds, the 1-minute load average and the CPU time of every process outside
the benchmark's own process tree. A configuration whose training shared the machine with
more than --busy-cores (default 0.1) of one core on average is flagged busy: a loud warning,
"busy": true in the JSON, "(busy)" in the tables. Its times, and every ratio built on them,
are not to be trusted. Elsewhere than Linux the load is "unknown" (null).

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

from . import machine_load as ml
from . import runner as rx
from .files import pyplot, table, write_json
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
    # project-best's model and learning rate with an adaptive solver: Heun-Euler 2(1) at
    # tolerance 1e-1, first step the whole interval (one accepted step is 2 evaluations:
    # torchdiffeq's Heun reuses the predictor's slope as the next step's first), direct
    # backprop (issue 16's search, RESULTS.md)
    "adaptive-heun": ("04", [
        "--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method",
        "adaptive_heun", "--node-rtol", "1e-1", "--node-atol", "1e-1", "--node-first-step", "1.0",
        "--node-backprop", "direct", "--lr", "4e-3"]),
    # issue 30: the classic with two layers per side, the frontier at equal time (the same
    # evaluations of a layer-sized f per token as one RK2 step), and dopri5 at tolerance 1e-2
    # kept at few steps by the solver's own error estimate as a penalty (one step drawn per
    # solve, Pal et al. 2023; equal-update probes in RESULTS.md)
    "classic-2layer": ("02", ["--lr", "4e-3", "--encoder-layers", "2", "--decoder-layers", "2"]),
    "adaptive-dopri5-err": ("04", [
        "--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method", "dopri5",
        "--node-rtol", "1e-2", "--node-atol", "1e-2", "--node-first-step", "1.0",
        "--node-backprop", "direct", "--node-error-penalty", "0.1", "--node-error-estimate",
        "local", "--lr", "4e-3"]),
    # the cheap adaptive candidate: adaptive-heun's solver held near one accepted step by the
    # summed error ratio (global: no extra evaluation under direct backprop) at weight 0.1
    # (equal-update probes: 0.03 let the decoder grow to 7 evaluations, 1.0 stalled learning)
    "adaptive-heun-err": ("04", [
        "--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method",
        "adaptive_heun", "--node-rtol", "1e-1", "--node-atol", "1e-1", "--node-first-step", "1.0",
        "--node-backprop", "direct", "--node-error-penalty", "0.1", "--node-error-estimate",
        "global", "--lr", "4e-3"]),
    # issue 38: the cheapest model found that is an ODE by the solver ladder: one Heun step
    # (adaptive_heun held at one accepted step over the span, two evaluations) with its free
    # Heun-Euler error estimate as the penalty at weight 0.3 (RESULTS.md, "Is it an ODE?")
    "heun1-err-w0.3": ("04", [
        "--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method",
        "adaptive_heun", "--node-rtol", "1e-1", "--node-atol", "1e-1", "--node-first-step", "1.0",
        "--node-min-step", "1.0", "--node-backprop", "direct", "--node-error-penalty", "0.3",
        "--node-error-estimate", "global", "--lr", "4e-3"]),
    # issue 38, item 2: the random step count per update (--node-train-steps), project-best's
    # model and rate: Euler on 1, 2 or 3 steps (two evaluations on average, two at validation)
    # and the midpoint on 1 or 2 (three on average, two at validation)
    "euler-train123": ("04", [
        "--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method", "euler",
        "--node-steps", "2", "--node-train-steps", "1 2 3", "--node-backprop", "direct", "--lr", "4e-3"]),
    "midpoint-train12": ("04", [
        "--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method", "midpoint",
        "--node-steps", "1", "--node-train-steps", "1 2", "--node-backprop", "direct", "--lr", "4e-3"]),
    # issue 38, item 3: one checkpoint at any depth. heun1-err-w0.3 at its own probed peak rate
    # (260-update probes, RESULTS.md: 8.18 at 4e-3, 7.22 at 8e-3, 6.57 at 1.6e-2, 6.84 at 3.2e-2)
    "heun1-err-w0.3-lr-probed": ("04", [
        "--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method",
        "adaptive_heun", "--node-rtol", "1e-1", "--node-atol", "1e-1", "--node-first-step", "1.0",
        "--node-min-step", "1.0", "--node-backprop", "direct", "--node-error-penalty", "0.3",
        "--node-error-estimate", "global", "--lr", "1.6e-2"]),
    # fairseq's discrete answer: 4 layers per side trained with LayerDrop 0.5 (Fan et al. 2020),
    # pruned at load time; pre-norm, which learns where post-norm 4 layers crawl (260-update
    # probes: post-norm 9.12 at 1e-3, 9.35 at 2e-3; pre-norm 8.44 at 4e-3, 8.03 at 8e-3, 7.97 at
    # 1.6e-2, 8.16 at 3.2e-2)
    "classic-4layer-prenorm-ld0.5": ("02", [
        "--lr", "1.6e-2", "--encoder-layers", "4", "--decoder-layers", "4", "--encoder-normalize-before",
        "--decoder-normalize-before", "--encoder-layerdrop", "0.5", "--decoder-layerdrop", "0.5"]),
    # issue 22's best block at equal parameters and updates: ODE Transformer's gated RK2 over
    # [0, 2], pre-norm dynamics, backprop through its two evaluations (docs/blocks.md)
    "rk2-gated-t2": ("02", [
        "--node-encoder", "--node-decoder", "--node-dynamics", "prenorm", "--node-output-init",
        "xavier", "--node-block", "rk2-gated", "--node-ts", "0 2", "--lr", "4e-3"]),
}
CLASSIC = "classic-1layer"
TOLERANCES = (1e-2, 1e-3, 1e-4)
AT_MINUTES = (5.0, 10.0, 15.0, 20.0, 30.0)
QUIET_CHECK_SECONDS = 10.0


# --------------------------------------------------------------------------------------------
# training runs


def run_name(name: str, seed: Optional[int]) -> str:
    """OUT/NAME without --seeds (the layout of earlier benchmarks), OUT/NAME-seedS with."""
    return name if seed is None else f"{name}-seed{seed}"


def run_config(name: str, args, budget_minutes: float, seed: Optional[int] = None) -> dict:
    """Train one configuration; its summary, with the machine's load before ("load_before",
    a quiet check) and during the training ("load") added."""
    config, extra = CONFIGS[name]
    run = run_name(name, seed)
    extra = list(extra) + (["--seed", str(seed)] if seed is not None else [])
    cmd = [sys.executable, os.path.join(SCRIPTS, "run_experiment.py"), config, "--scale", "mini",
           "--data-bin", args.data_bin, "--out", args.out, "--run-name", run, "--force",
           "--quiet", "--budget-minutes", f"{budget_minutes:.4g}"]
    if args.smoke:
        cmd.append("--smoke")
    if extra:
        cmd += ["--extra", *extra]
    before = ml.quiet_check(args.quiet_seconds, args.busy_cores)
    if before["busy"]:
        print(f"{PROG}: WARNING: the machine is busy before {run}: {ml.describe(before)}",
              file=sys.stderr, flush=True)
    print(f"{PROG}: {run}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    with ml.LoadMonitor(args.load_interval, args.busy_cores) as monitor:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL)
    load = monitor.result
    print(f"{PROG}: {run}: {ml.describe(load)}", file=sys.stderr, flush=True)
    if load["busy"]:
        print(busy_warning(run, load), file=sys.stderr, flush=True)
    summary_path = os.path.join(args.out, run, "summary.json")
    if not os.path.exists(summary_path):
        raise SystemExit(f"{PROG}: error: {run}: run_experiment.py wrote no summary (exit {proc.returncode})")
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    summary["load_before"], summary["load"] = before, load
    return summary


def busy_warning(run: str, load: dict) -> str:
    return (f"{PROG}: WARNING: BUSY MACHINE during {run}: other processes used "
            f"{load['other_cpu_cores']:.2f} cores on average (threshold {load['busy_threshold_cores']:g}): "
            "its times and the ratios built on them are not trustworthy; rerun it on a quiet machine")


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


def valid_curve(epochs: List[dict]) -> List[List[float]]:
    """[training seconds, valid loss] of every validation, in order."""
    out = []
    for row in epochs:
        loss, wall = _float(row.get("valid_loss")), _float(row.get("wall_seconds"))
        if loss is not None and wall is not None:
            out.append([wall, loss])
    return out


def minutes_key(m: float) -> str:
    return f"{m:g}"


def best_loss_by(epochs: List[dict], at_minutes) -> Dict[str, Optional[float]]:
    """The best valid loss of the validations made by each training time (minutes, JSON
    keys as "5", "7.5"); null where the run trained for less than that (its loss there is
    not known) or had no validation by then."""
    curve = valid_curve(epochs)
    walls = [_float(r.get("wall_seconds")) for r in epochs]
    trained = max([w for w in walls if w is not None], default=None)
    out = {}
    for m in at_minutes:
        seen = [loss for wall, loss in curve if wall <= m * 60.0]
        out[minutes_key(m)] = (min(seen) if seen and trained is not None and trained >= m * 60.0
                               else None)
    return out


def seed_of(summary: dict) -> Optional[int]:
    """fairseq's --seed of the run's command (the last one wins, as in fairseq's parser)."""
    cmd = summary.get("command") or []
    seed = None
    for flag, value in zip(cmd, cmd[1:]):
        if flag == "--seed":
            try:
                seed = int(value)
            except ValueError:
                pass
    return seed


def nfe_per_update(summary: dict, direction: str) -> Optional[float]:
    means = [v["mean"] for k, v in summary.get("nfe_train_inner", {}).items() if k.endswith("_" + direction)]
    return round(sum(means), 1) if means else None


def nfe_forward_by_epoch(epochs: List[dict]) -> Dict[str, List[Optional[float]]]:
    """Mean forward evaluations per training batch in each epoch, per NODE side (per solve
    for the benchmark's configurations, which have one block per side); {} for the classic."""
    out = {}
    for side, tag in (("encoder", "enc"), ("decoder", "dec")):
        values = [_float(r.get(f"train_nfe_{tag}_{mn.FORWARD}")) for r in epochs]
        if any(v is not None for v in values):
            out[side] = values
    return out


def row_of(name: str, summary: dict, epochs: List[dict], classic_best: Optional[float],
           at_minutes=AT_MINUTES, run: Optional[str] = None) -> dict:
    peak = summary.get(mn.CUDA_PEAK) or summary.get("peak_rss_mb")
    load = summary.get("load")
    curve = valid_curve(epochs)
    walls = [w for w in (_float(r.get("wall_seconds")) for r in epochs) if w is not None]
    return {
        "name": name,
        "best_valid_loss": summary.get("best_valid_loss"),
        "seconds_to_classic_loss": (seconds_to_loss(epochs, classic_best)
                                    if classic_best is not None else None),
        "tokens_per_second": summary.get("tokens_per_second"),
        "nfe_forward": nfe_per_update(summary, mn.FORWARD),
        "nfe_backward": nfe_per_update(summary, mn.BACKWARD),
        "nfe_forward_by_epoch": nfe_forward_by_epoch(epochs),
        "peak_memory_mb": peak,
        "peak_memory_kind": "cuda_max_allocated" if summary.get(mn.CUDA_PEAK) else "rss",
        "updates": summary.get("updates"),
        "epochs": summary.get("epochs"),
        "stop_reason": summary.get("stop_reason"),
        mn.SKIPPED: summary.get(mn.SKIPPED),
        "command_line": summary.get("command_line"),
        "run": run or name,
        "seed": seed_of(summary),
        "training_seconds": max(walls) if walls else None,
        "best_valid_loss_at_minutes": best_loss_by(epochs, at_minutes),
        "valid_curve": curve,
        "busy": load.get("busy") if load else None,
        "load": load,
        "load_before": summary.get("load_before"),
    }


def by_seed(rows: List[dict]) -> Dict[str, List[dict]]:
    """Rows grouped by their "seed" (as a JSON key; "-" when unknown), in order."""
    groups: Dict[str, List[dict]] = {}
    for r in rows:
        groups.setdefault("-" if r.get("seed") is None else str(r["seed"]), []).append(r)
    return groups


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


def _f(v) -> str:
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def _multi_seed(rows: List[dict]) -> bool:
    return len(by_seed(rows)) > 1


def _label(r: dict, multi: bool) -> str:
    seed = f" (seed {r['seed']})" if multi and r.get("seed") is not None else ""
    return r["name"] + seed + (" (busy)" if r.get("busy") else "")


def _verdict_of(doc: dict, r: dict) -> dict:
    """The row's verdict: against the classic of its own seed."""
    per_seed = doc.get("verdict_by_seed")
    v = per_seed.get("-" if r.get("seed") is None else str(r["seed"])) if per_seed else None
    return (v if v is not None else doc.get("verdict", {})).get(r["name"], {})


def _at_minutes(doc: dict) -> List[str]:
    if doc.get("at_minutes"):
        return [minutes_key(m) for m in doc["at_minutes"]]
    keys: List[str] = []
    for r in doc["configurations"]:
        keys += [k for k in (r.get("best_valid_loss_at_minutes") or {}) if k not in keys]
    return sorted(keys, key=float)


def report_lines(doc: dict, md: bool = True) -> List[str]:
    """The tables of a benchmark JSON: markdown for the results page, plain for the console.
    Files written before a field existed show "-" for it."""
    rows = doc["configurations"]
    multi = _multi_seed(rows)
    lines = []
    if doc.get("node_budget_minutes") is not None:
        per_seed = doc.get("node_budget_minutes_by_seed") or {}
        node = (", ".join(f"{m:g} min (seed {s})" for s, m in per_seed.items()) if len(per_seed) > 1
                else f"{doc['node_budget_minutes']:g} min")
        how = ("a fixed budget, equal training time" if doc.get("node_budget_factor") is None else
               f"{doc['node_budget_factor']:g} x the classic's time to its best loss")
        lines += [f"Training budgets: classic {doc['budget_minutes']:g} min; each NODE configuration "
                  f"{node} ({how}).", ""]
    header = ("configuration", "best valid loss", "s to classic's best", "time ratio", "tokens/s",
              "NFE fwd / update", "NFE bwd / update", "peak memory (MB)", "updates", "goal met",
              "other processes' CPU (cores)", "load average")
    cells = []
    for r in rows:
        v = _verdict_of(doc, r)
        load = r.get("load") or {}
        cells.append([_label(r, multi), _f(r["best_valid_loss"]), _f(r["seconds_to_classic_loss"]),
                      _f(v.get("time_ratio_to_classic_loss", 1.0 if r["name"] == CLASSIC else None)),
                      _f(r["tokens_per_second"]), _f(r["nfe_forward"]), _f(r["nfe_backward"]),
                      _f(r["peak_memory_mb"]), _f(r["updates"]), _f(v.get("goal_met")) if v else "reference",
                      _f(load.get("other_cpu_cores")), _f(load.get("loadavg_mean"))])
    lines += table(header, cells, markdown=md)
    busy = [r for r in rows if r.get("busy")]
    loads = [r["load"] for r in rows if (r.get("load") or {}).get("other_cpu_cores") is not None]
    if busy:
        lines += ["", f"(busy): other processes used more than {busy[0]['load']['busy_threshold_cores']:g} "
                  "of one core on average while a configuration so marked trained; its times, and the ratios "
                  "built on them, are not trustworthy."]
    elif loads:
        lines += ["", f"Machine load: other processes used at most "
                  f"{max(x['other_cpu_cores'] for x in loads):g} of one core on average during any "
                  f"configuration's training (busy above {loads[0]['busy_threshold_cores']:g})."]
    minutes = _at_minutes(doc)
    if any(r.get("best_valid_loss_at_minutes") for r in rows):
        lines += ["", "Best valid loss at equal wall-clock (training) time:", ""]
        lines += table(("configuration", *(f"{m} min" for m in minutes)),
                       [[_label(r, multi), *(_f((r.get("best_valid_loss_at_minutes") or {}).get(m))
                                             for m in minutes)] for r in rows], markdown=md)
    else:
        lines += ["", "(No best valid loss at equal wall-clock time: this file predates it.)"]
    if doc.get("memory_vs_nfe"):
        header = ("backprop", "tolerance", "NFE forward", "NFE backward", "peak memory of the step (MB)")
        lines += [""] + table(header, [_memory_cells(m, _f) for m in doc["memory_vs_nfe"]], markdown=md)
    return lines


def markdown(doc: dict) -> str:
    """The results page's tables, from a benchmark JSON."""
    return "\n".join(report_lines(doc, md=True))


def print_report(doc: dict) -> None:
    """The console's tables, each verdict in words (per seed), and the busy warnings again."""
    print("\n".join(report_lines(doc, md=False)))
    groups = by_seed(doc["configurations"])
    for r in doc["configurations"]:
        v = _verdict_of(doc, r)
        if r["name"] != CLASSIC and v:
            seed = f" (seed {r['seed']})" if r.get("seed") is not None else ""
            same_seed = groups["-" if r.get("seed") is None else str(r["seed"])]
            busy = any(x.get("busy") for x in same_seed if x is r or x["name"] == CLASSIC)
            print(f"{r['name']}{seed}: time to the classic's best loss = {v['time_ratio_to_classic_loss']} x "
                  f"the classic's; throughput {v['tokens_per_second_ratio']} x; goal met: {v['goal_met']}"
                  + (" (BUSY MACHINE: not trustworthy)" if busy else ""))
    for r in doc["configurations"]:
        if r.get("busy"):
            print(busy_warning(r.get("run") or r["name"], r["load"]))


def _memory_cells(m: dict, peak) -> list:
    return [m["backprop"], f"{m['tol']:g}", m["nfe_forward"], m["nfe_backward"], peak(m["step_peak_mb"])]


def time_figure(doc: dict, path: str) -> None:
    """Valid loss against training time, every configuration (and seed) in one figure."""
    plt = pyplot()

    rows = [r for r in doc["configurations"] if r.get("valid_curve")]
    if not rows:
        raise SystemExit(f"{PROG}: error: no valid-loss curves in the benchmark file (it predates them)")
    multi = _multi_seed(rows)
    seeds = list(by_seed(rows))
    colours = {n: f"C{i}" for i, n in enumerate(dict.fromkeys(r["name"] for r in rows))}
    styles = ("-", "--", ":", "-.")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        seed = "-" if r.get("seed") is None else str(r["seed"])
        xs = [w / 60.0 for w, _ in r["valid_curve"]]
        ys = [loss for _, loss in r["valid_curve"]]
        ax.plot(xs, ys, marker="o", markersize=3, color=colours[r["name"]],
                linestyle=styles[seeds.index(seed) % len(styles)], label=_label(r, multi))
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("valid loss (bits)")
    ax.set_title("valid loss against wall-clock training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def memory_figure(doc: dict, path: str) -> None:
    """Peak memory of one training step against its NFE (forward + backward), per backprop."""
    plt = pyplot()

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


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return v
    return parse


def _seed(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer seed")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def run_seed(a, names: List[str], seed: Optional[int], stages: Stages, first: int):
    """The classic, then the NODE configurations for factor x its time to its best loss:
    their rows, verdict and the NODE budget (minutes)."""
    classic_run = run_name(CLASSIC, seed)
    stages.start(first, "training")
    summaries = {CLASSIC: run_config(CLASSIC, a, a.budget_minutes, seed)}
    classic_best = summaries[CLASSIC].get("best_valid_loss")
    node_minutes = (a.node_budget_minutes if a.node_budget_minutes is not None else
                    node_budget_minutes(read_epochs(os.path.join(a.out, classic_run)), classic_best,
                                        a.node_budget_factor, a.budget_minutes))
    for i, n in enumerate(names):
        if n != CLASSIC:
            stages.expected[first + i] = node_minutes * 60 + 30
            stages.start(first + i, f"training for {node_minutes:.3g} min")
            summaries[n] = run_config(n, a, node_minutes, seed)
    rows = [row_of(n, summaries[n], read_epochs(os.path.join(a.out, run_name(n, seed))), classic_best,
                   a.at_minutes, run_name(n, seed)) for n in names]
    return rows, verdict(rows), node_minutes


def arg_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--node-budget-minutes", type=float, metavar="M",
                   help="NODE configurations train for M minutes, whatever the classic's time to its "
                        "best (equal training time; replaces --node-budget-factor)")
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "benchmark.json"), metavar="FILE")
    p.add_argument("--only", nargs="+", choices=sorted(CONFIGS), metavar="NAME",
                   help=f"a subset of: {', '.join(CONFIGS)} ({CLASSIC} is always run)")
    p.add_argument("--seeds", nargs="+", type=_seed, metavar="S",
                   help="run every selected configuration once per seed (fairseq --seed S) into "
                        "OUT/NAME-seedS (default: once, with the configs' own seed, into OUT/NAME)")
    p.add_argument("--at-minutes", nargs="+", type=_positive(float), default=list(AT_MINUTES), metavar="M",
                   help="training times at which every configuration's best valid loss so far is "
                        f"reported (default {' '.join(f'{m:g}' for m in AT_MINUTES)})")
    p.add_argument("--busy-cores", type=float, default=ml.BUSY_CORES, metavar="C",
                   help="flag a configuration busy when other processes used more than C cores on "
                        f"average during its training (default {ml.BUSY_CORES:g})")
    p.add_argument("--load-interval", type=_positive(float), default=ml.SAMPLE_SECONDS, metavar="S",
                   help=f"seconds between load samples (default {ml.SAMPLE_SECONDS:g})")
    p.add_argument("--quiet-seconds", type=float, metavar="S",
                   help="length of the load check before each configuration "
                        f"(default {QUIET_CHECK_SECONDS:g}; 1 with --smoke)")
    p.add_argument("--skip-memory", action="store_true", help="no memory-against-NFE probes")
    p.add_argument("--smoke", action="store_true", help="tiny models and budgets: checks the pipeline")
    p.add_argument("--render", metavar="FILE", help="print a benchmark JSON as markdown tables and exit")
    p.add_argument("--figure", metavar="PNG", help="with --render: also plot memory against NFE")
    p.add_argument("--figure-time", metavar="PNG",
                   help="plot valid loss against training time, all configurations in one figure "
                        "(with --render: of that file; else of this run)")
    p.add_argument("--memory-probe", nargs=2, metavar=("BACKPROP", "TOL"), help=argparse.SUPPRESS)
    return p


def render(a) -> int:
    """--render: a benchmark JSON's tables (and figures), nothing run."""
    with open(a.render, encoding="utf-8") as f:
        doc = json.load(f)
    print(markdown(doc))
    if a.figure:
        memory_figure(doc, a.figure)
    if a.figure_time:
        time_figure(doc, a.figure_time)
    return 0


def check_args(p: argparse.ArgumentParser, a) -> None:
    """Stop with one line on an impossible option; fill in the defaults that depend on others."""
    if not a.data_bin or not os.path.isdir(a.data_bin):
        p.error(f"--data-bin {a.data_bin!r}: data-bin directory not found")
    if not a.budget_minutes > 0:
        p.error("--budget-minutes must be > 0")
    if not a.node_budget_factor > 0:
        p.error("--node-budget-factor must be > 0")
    if a.node_budget_minutes is not None and not a.node_budget_minutes > 0:
        p.error("--node-budget-minutes must be > 0")
    if not a.busy_cores >= 0:
        p.error("--busy-cores must be >= 0")
    if a.seeds and len(set(a.seeds)) != len(a.seeds):
        p.error(f"--seeds {' '.join(map(str, a.seeds))}: a seed is given twice")
    if a.quiet_seconds is None:
        a.quiet_seconds = 1.0 if a.smoke else QUIET_CHECK_SECONDS
    elif a.quiet_seconds < 0:
        p.error("--quiet-seconds must be >= 0")
    a.at_minutes = sorted(set(a.at_minutes))


def run_seeds(a, names: List[str], seeds: list) -> tuple:
    """Every configuration, once per seed, with the time left shown: (rows, verdict by seed,
    NODE budget by seed), keyed "-" for the configs' own seed."""
    # time left: the budgets (plus start-up, the load check and the last validation); the NODE
    # runs' budget is known once the classic has run, its upper bound (factor x its budget) until then
    stages = Stages(PROG, [run_name(n, s) for s in seeds for n in names],
                    [(a.budget_minutes if n == CLASSIC else
                      a.node_budget_minutes or a.budget_minutes * a.node_budget_factor) * 60 + 30
                     + a.quiet_seconds for s in seeds for n in names])
    rows, verdicts, node_minutes = [], {}, {}
    for k, seed in enumerate(seeds):
        r, v, m = run_seed(a, names, seed, stages, k * len(names))
        rows += r
        key = "-" if seed is None else str(seed)
        verdicts[key], node_minutes[key] = v, round(m, 3)
    stages.finish()
    return rows, verdicts, node_minutes


def report(a, argv, rows: List[dict], verdicts: dict, node_minutes: dict, memory: list,
           started: datetime.datetime) -> dict:
    """The benchmark JSON: the rows, verdicts, settings, machine and times."""
    first = next(iter(verdicts))
    busy = [r["run"] for r in rows if r.get("busy")]
    doc = {
        "configurations": rows,
        "verdict": verdicts[first],
        "memory_vs_nfe": memory,
        "budget_minutes": a.budget_minutes,
        "node_budget_factor": None if a.node_budget_minutes is not None else a.node_budget_factor,
        "node_budget_minutes": node_minutes[first],
        "seeds": a.seeds,
        "verdict_by_seed": verdicts if a.seeds else None,
        "node_budget_minutes_by_seed": node_minutes if a.seeds else None,
        "at_minutes": a.at_minutes,
        "busy_threshold_cores": a.busy_cores,
        "load_interval_seconds": a.load_interval,
        "busy_runs": busy,
        "load_known": all(r.get("busy") is not None for r in rows),
        "smoke": a.smoke,
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "benchmark.py", *(argv or sys.argv[1:])]),
        "machine": rx.machine_info(),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return doc


def write_report(a, doc: dict) -> None:
    """Print the tables, write the JSON (and figure), and warn loudly of a busy machine."""
    print_report(doc)
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    write_json(a.json, doc)
    print(f"{PROG}: wrote {a.json}", file=sys.stderr)
    if a.figure_time:
        time_figure(doc, a.figure_time)
        print(f"{PROG}: wrote {a.figure_time}", file=sys.stderr)
    busy = doc["busy_runs"]
    if busy:
        print(f"{PROG}: WARNING: BUSY MACHINE: {', '.join(busy)} shared the machine with other "
              "processes; rerun them on a quiet machine before trusting their times", file=sys.stderr)


def main(argv=None) -> int:
    p = arg_parser()
    a = p.parse_args(argv)
    if a.render:
        return render(a)
    if a.memory_probe:
        print(json.dumps(memory_probe(a.memory_probe[0], float(a.memory_probe[1]), a.smoke)))
        return 0
    check_args(p, a)
    names = [n for n in CONFIGS if n == CLASSIC or not a.only or n in a.only]
    started = datetime.datetime.now().astimezone()
    rows, verdicts, node_minutes = run_seeds(a, names, a.seeds or [None])
    memory = [] if a.skip_memory else memory_vs_nfe(a.smoke)
    write_report(a, report(a, argv, rows, verdicts, node_minutes, memory, started))
    return 0

if __name__ == "__main__":
    sys.exit(main())
