"""Equal parameters, equal updates: the classic layers, the NODE's fixed-grid steps and the
learned RK blocks (--node-block) trained on the same data, schedule and batch size for the
same number of updates; valid loss at fixed update counts, test2016 BLEU at the end.

    python -m experiments.equal_updates --data-bin DIR [--out runs/equal-updates]
        [--rows NAME ...] [--seeds 1 2] [--updates 2000] [--every 500] [--max-tokens 4096]
        [--lr NAME=LR ...] [--parallel 2] [--threads 1] [--bleu] [--json docs/benchmark.json]
        [--figure PNG] [--dry-run]
    python -m experiments.equal_updates --render docs/benchmark.json [--by-seed | --by-lr U]
        [--rows NAME ...] [--only-lr LR ...] [--figure PNG]

Runs at equal updates do not depend on the machine's speed: --parallel of them may share it,
--threads intra-op threads each. Each row's fairseq-train log is kept in OUT/NAME-seedS/; a
longer run of a row, seed and rate that ran before continues from its last checkpoint.
The table goes into --json under the key ``equal_updates`` (other keys are kept): one entry
per row and seed, {"name", "seed", "params", "f_evals_per_token", "loss_at_updates",
"bleu_test2016", "lr", ...}. ``f_evals_per_token``: evaluations of a layer-sized f per
token, encoder and decoder together, in one forward (the classic 1-layer model: 2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

from .configs import ROOT, USER_DIR, find_config, load_config
from .fairseq_log import parse_log
from .files import command_line, pyplot, table, write_json

PROG = "equal_updates"
JSON_KEY = "equal_updates"
CLASSIC = "classic-1layer"

PRENORM = ["--node-dynamics", "prenorm", "--node-output-init", "xavier"]
BOTH = ["--node-encoder", "--node-decoder"]
DIRECT = ["--node-backprop", "direct"]

# name -> (flags over config 02 at mini scale, evaluations of f per token: encoder + decoder)
ROWS: Dict[str, tuple] = {
    CLASSIC: ([], 2),  # fairseq's default, post-norm
    "classic-prenorm": (["--encoder-normalize-before", "--decoder-normalize-before"], 2),
    # not equal parameters: a second layer with its own weights, the evaluations of a midpoint
    "classic-2layer": (["--encoder-layers", "2", "--decoder-layers", "2"], 4),
    "node-euler": ([*BOTH, *PRENORM, "--node-method", "euler", *DIRECT], 2),
    "node-midpoint": ([*BOTH, *PRENORM, "--node-method", "midpoint", "--node-steps", "1", *DIRECT], 4),
    "node-rk4": ([*BOTH, *PRENORM, "--node-method", "rk4", "--node-steps", "1", *DIRECT], 8),
    "rk2-gated": ([*BOTH, *PRENORM, "--node-block", "rk2-gated"], 4),
    "pc": ([*BOTH, *PRENORM, "--node-block", "pc"], 6),
    # ODE Transformer's choice: the block in the encoder, a plain (fairseq post-norm) decoder
    "rk2-gated-encoder": (["--node-encoder", *PRENORM, "--node-block", "rk2-gated"], 3),
    "pc-encoder": (["--node-encoder", *PRENORM, "--node-block", "pc"], 4),
    # ODE Transformer's headline shape at mini scale (one seed): 6 encoder blocks, 6 layers
    "classic-6layer": (["--encoder-layers", "6", "--decoder-layers", "6"], 12),
    "rk2-gated-6enc": (["--node-encoder", *PRENORM, "--node-block", "rk2-gated",
                        "--encoder-layers", "6", "--decoder-layers", "6"], 18),
}
# Probes of the per-update gap between one midpoint step and one Euler step (same weights
# evaluated twice, learning less): dropout masks (drawn once per solve, so both evaluations
# drop the same units), initialisation (xavier against the zero start) and, with --lr, the
# learning rate.
PROBES: Dict[str, tuple] = {
    "node-euler-dropout0": ([*ROWS["node-euler"][0], "--dropout", "0"], 2),
    "node-midpoint-dropout0": ([*ROWS["node-midpoint"][0], "--dropout", "0"], 4),
    # depth, not accuracy? Two Euler steps over [0, 2] are fairseq's pre-norm 2-layer stack with
    # its two layers' weights tied; one midpoint step over [0, 2] spends the same evaluations
    "node-euler-2steps-t2": ([*BOTH, *PRENORM, "--node-method", "euler", "--node-steps", "2",
                              "--node-ts", "0 2", *DIRECT], 4),
    "node-midpoint-t2": ([*BOTH, *PRENORM, "--node-method", "midpoint", "--node-steps", "1",
                          "--node-ts", "0 2", *DIRECT], 4),
    "rk2-gated-t2": ([*BOTH, *PRENORM, "--node-block", "rk2-gated", "--node-ts", "0 2"], 4),
    "node-midpoint-zero-init": ([*BOTH, "--node-dynamics", "prenorm", "--node-output-init", "zero",
                                 "--node-method", "midpoint", "--node-steps", "1", *DIRECT], 4),
    # the 6-layer classic with rk2-gated-6enc's norm placement (pre-norm encoder, fairseq's
    # post-norm decoder): the block against the layer, norm placement held fixed
    "classic-6layer-prenorm-encoder": ([*ROWS["classic-6layer"][0], "--encoder-normalize-before"], 12),
}
# Issue 30's search: blocks whose solver chooses its own steps (pre-norm dynamics with
# fairseq's initialisation, first step the whole interval, direct backprop unless named), with
# the regularisers meant to keep their evaluations flat. Evaluations per token: None, the
# solver decides (each run's NFE per solve is in its log and its row).
ADAPTIVE_BASE = [*BOTH, *PRENORM, "--node-first-step", "1.0"]


def _adaptive(method: str, tol: str, *extra: str) -> tuple:
    return ([*ADAPTIVE_BASE, "--node-method", method, "--node-rtol", tol, "--node-atol", tol,
             *extra], None)


ADAPTIVE: Dict[str, tuple] = {
    "adaptive-dopri5": _adaptive("dopri5", "1e-2", *DIRECT),
    "adaptive-dopri5-err-local": _adaptive("dopri5", "1e-2", *DIRECT, "--node-error-penalty", "0.1",
                                           "--node-error-estimate", "local"),
    "adaptive-dopri5-err-global": _adaptive("dopri5", "1e-2", *DIRECT, "--node-error-penalty", "0.1",
                                            "--node-error-estimate", "global"),
    "adaptive-dopri5-kinetic": _adaptive("dopri5", "1e-2", *DIRECT, "--node-kinetic-energy", "0.01"),
    "adaptive-dopri5-kinetic-jacobian": _adaptive("dopri5", "1e-2", *DIRECT, "--node-kinetic-energy",
                                                  "0.01", "--node-jacobian-norm", "0.01"),
    "adaptive-dopri5-steer": _adaptive("dopri5", "1e-2", *DIRECT, "--node-steer-b", "0.5"),
    "adaptive-dopri5-seminorm": _adaptive("dopri5", "1e-2", "--node-adjoint-seminorm"),
    "adaptive-dopri5-err-local-adjoint": _adaptive("dopri5", "1e-2", "--node-adjoint-seminorm",
                                                   "--node-error-penalty", "0.1",
                                                   "--node-error-estimate", "local"),
    "adaptive-dopri5-t2-err-local": _adaptive("dopri5", "1e-2", *DIRECT, "--node-ts", "0 2",
                                              "--node-first-step", "2.0", "--node-error-penalty",
                                              "0.1", "--node-error-estimate", "local"),
    "adaptive-dopri5-tol1e-3-err-local": _adaptive("dopri5", "1e-3", *DIRECT, "--node-error-penalty",
                                                   "0.1", "--node-error-estimate", "local"),
    "adaptive-bosh3": _adaptive("bosh3", "1e-2", *DIRECT),
    "adaptive-bosh3-err-local": _adaptive("bosh3", "1e-2", *DIRECT, "--node-error-penalty", "0.1",
                                          "--node-error-estimate", "local"),
    "adaptive-heun": _adaptive("adaptive_heun", "1e-1", *DIRECT),
    "adaptive-heun-err-local": _adaptive("adaptive_heun", "1e-1", *DIRECT, "--node-error-penalty",
                                         "0.1", "--node-error-estimate", "local"),
    # candidates for the equal-time benchmark's cheap row: Heun-Euler with the free (global)
    # estimate at weights 1.0, 0.1 and 0.03, and at 1.0 over [0, 2] (rk2-gated-t2's span)
    "adaptive-heun-err-global-w1": _adaptive("adaptive_heun", "1e-1", *DIRECT, "--node-error-penalty",
                                             "1.0", "--node-error-estimate", "global"),
    "adaptive-heun-err-global": _adaptive("adaptive_heun", "1e-1", *DIRECT, "--node-error-penalty",
                                          "0.1", "--node-error-estimate", "global"),
    "adaptive-heun-err-global-w0.03": _adaptive("adaptive_heun", "1e-1", *DIRECT,
                                                "--node-error-penalty", "0.03",
                                                "--node-error-estimate", "global"),
    "adaptive-heun-t2-err-global-w1": _adaptive("adaptive_heun", "1e-1", *DIRECT, "--node-ts", "0 2",
                                                "--node-first-step", "2.0", "--node-error-penalty",
                                                "1.0", "--node-error-estimate", "global"),
}
# Issue 38's search: a model that stays an ODE (its converged solve within the ladder's
# threshold of its own, experiments.analysis.solver_ladder) at the cost of one fixed
# two-evaluation step. Each is project-best's midpoint step with something added, or the
# same cost's Heun step: adaptive_heun held at one accepted step over the whole interval
# (first step = smallest step = the span: torchdiffeq accepts a step at the smallest size
# whatever its error) so that its free embedded error (Heun against Euler, read from the
# controller's norm under direct backprop) is the penalty, at no extra evaluation.
MIDPOINT = [*BOTH, *PRENORM, "--node-method", "midpoint", "--node-steps", "1", *DIRECT]
HEUN_ONE_STEP = [*BOTH, *PRENORM, "--node-method", "adaptive_heun", "--node-rtol", "1e-1",
                 "--node-atol", "1e-1", "--node-first-step", "1.0", "--node-min-step", "1.0", *DIRECT]
EULER_TWO_STEPS = [*BOTH, *PRENORM, "--node-method", "euler", "--node-steps", "2", *DIRECT]
ODE_CANDIDATES: Dict[str, tuple] = {
    "heun1": (HEUN_ONE_STEP, 4),
    "heun1-err-w0.1": ([*HEUN_ONE_STEP, "--node-error-penalty", "0.1", "--node-error-estimate",
                        "global"], 4),
    "heun1-err-w1": ([*HEUN_ONE_STEP, "--node-error-penalty", "1.0", "--node-error-estimate",
                      "global"], 4),
    "heun1-err-w0.3": ([*HEUN_ONE_STEP, "--node-error-penalty", "0.3", "--node-error-estimate",
                        "global"], 4),
    # the span as depth: each solve's end time drawn from U(0.5, 1.5) (STEER), one step of
    # size 1; an end time past 1 adds a partial step (1.5 steps, 3 evaluations a block on average)
    "midpoint-steer0.5": ([*MIDPOINT, "--node-steer-b", "0.5"], 6),
    # RNODE's kinetic energy: straighter flows, smaller discretisation error
    "midpoint-kinetic0.1": ([*MIDPOINT, "--node-kinetic-energy", "0.1"], 4),
    # a random step count per update (--node-train-steps): Euler on 1, 2 or 3 steps, two
    # evaluations per solve on average, run at two; against Euler on two steps every update
    # (Ott et al.'s remedy in its simplest form: a step below the critical size)
    "euler-train123": ([*EULER_TWO_STEPS, "--node-train-steps", "1 2 3"], 4),
    "euler2": (EULER_TWO_STEPS, 4),
    # two and a half evaluations per solve on average: Euler on 1-4 steps, and the midpoint
    # on one step three updates in four, two steps in the fourth
    "euler-train1234": ([*EULER_TWO_STEPS, "--node-train-steps", "1 2 3 4"], 5),
    "midpoint-train1112": ([*MIDPOINT, "--node-train-steps", "1 1 1 2"], 5),
    # a heavier tail at two evaluations on average (Euler on 1, 1 or 4 steps), and the
    # midpoint on one or two steps (three evaluations on average; 2.67 with one step twice
    # in three)
    "euler-train114": ([*EULER_TWO_STEPS, "--node-train-steps", "1 1 4"], 4),
    "midpoint-train12": ([*MIDPOINT, "--node-train-steps", "1 2"], 6),
    "midpoint-train112": ([*MIDPOINT, "--node-train-steps", "1 1 2"], 5.33),
}
# Issue 38's "one checkpoint, any depth": fairseq's discrete answer, a 4-layer classic trained
# with LayerDrop 0.5 on both sides and pruned at load time (--encoder-layers-to-keep), and the
# 4-layer classic alone, post-norm (fairseq's default) and pre-norm, for their learning-rate probes.
FOUR = ["--encoder-layers", "4", "--decoder-layers", "4"]
LAYERDROP = ["--encoder-layerdrop", "0.5", "--decoder-layerdrop", "0.5"]
PRENORM_CLASSIC = ROWS["classic-prenorm"][0]
DEPTH: Dict[str, tuple] = {
    "classic-4layer": (FOUR, 8),
    "classic-4layer-prenorm": ([*FOUR, *PRENORM_CLASSIC], 8),
    # half the layers dropped on average: 4 evaluations per token in training, 8 at full depth
    "classic-4layer-ld0.5": ([*FOUR, *LAYERDROP], 8),
    "classic-4layer-prenorm-ld0.5": ([*FOUR, *PRENORM_CLASSIC, *LAYERDROP], 8),
}
DEFAULT_ROWS = [n for n in ROWS if "6" not in n] + ["rk2-gated-t2"]  # the best block (RESULTS.md)
ROWS.update(PROBES)
ROWS.update(ADAPTIVE)
ROWS.update(ODE_CANDIDATES)
ROWS.update(DEPTH)
PARAMS = re.compile(r"num\. shared model params: ([\d,]+)")


def base_flags(max_tokens: int) -> List[str]:
    """Config 02 at mini scale (the benchmark's classic), its batch size set by --max-tokens."""
    cfg = load_config(find_config("02"))
    flags = [*cfg["args"], *cfg["scales"]["mini"]]
    i = flags.index("--max-tokens")
    flags[i + 1] = str(max_tokens)
    return flags


def command(a, name: str, seed: int, lr: float, run_dir: str) -> List[str]:
    flags, _ = ROWS[name]
    return [sys.executable, "-m", "fairseq_cli.train", os.path.abspath(a.data_bin),
            "--user-dir", USER_DIR, *base_flags(a.max_tokens), *flags, "--lr", f"{lr:g}",
            "--seed", str(seed), "--max-update", str(a.updates),
            "--validate-interval-updates", str(a.every), "--validate-interval", "1000",
            "--save-dir", os.path.join(run_dir, "checkpoints"), "--no-epoch-checkpoints",
            "--save-interval-updates", str(a.every if a.keep_checkpoints else a.updates),
            "--keep-interval-updates", "-1" if a.keep_checkpoints else "1",
            "--log-format", "json", "--log-interval", "50", "--num-workers", "0"]


def row_lr(a, name: str) -> float:
    return a.lr_by_row.get(name, a.default_lr)


def run_dir_of(a, name: str, seed: int) -> str:
    """OUT/NAME-seedS at the default learning rate, OUT/NAME-lrLR-seedS at another (probes)."""
    lr = row_lr(a, name)
    return os.path.join(a.out, f"{name}-seed{seed}" if lr == a.default_lr else f"{name}-lr{lr:g}-seed{seed}")


def start(a, name: str, seed: int):
    run_dir = run_dir_of(a, name, seed)
    os.makedirs(run_dir, exist_ok=True)
    cmd = command(a, name, seed, row_lr(a, name), run_dir)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    log_path = os.path.join(run_dir, "train.log")
    # fairseq-train continues from the save dir's last checkpoint (a shorter probe of the same
    # row, seed and rate): keep the log of the updates before it. The continuation is the run a
    # fresh one would make: fairseq reseeds every update from --seed and the update count.
    resumed = os.path.isfile(log_path) and os.path.isfile(
        os.path.join(run_dir, "checkpoints", "checkpoint_last.pt"))
    if resumed:
        print(f"{PROG}: {name} seed {seed}: continuing from {run_dir}/checkpoints/checkpoint_last.pt",
              flush=True)
    log = open(log_path, "a" if resumed else "w", encoding="utf-8")
    if resumed:
        log.write("## resumed from checkpoints/checkpoint_last.pt\n")
    log.write("# " + " ".join(shlex.quote(c) for c in cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL)
    return dict(name=name, seed=seed, run_dir=run_dir, cmd=cmd, proc=proc, log=log, t0=time.time())


def bleu(a, run_dir: str) -> Optional[float]:
    """test2016 BLEU of the run's last checkpoint (evaluation.py: beam 5, sacreBLEU), reused
    from an earlier --bleu when that scored this same checkpoint file."""
    from .evaluation import main as evaluate

    ckpt = os.path.join(run_dir, "checkpoints", "checkpoint_last.pt")
    scored = os.path.join(run_dir, "bleu_test.json")
    if not (os.path.isfile(scored) and os.path.isfile(ckpt)
            and os.path.getmtime(scored) > os.path.getmtime(ckpt)):
        if evaluate([run_dir, "--data-bin", a.data_bin, "--checkpoint", ckpt, "--subset", "test"]) != 0:
            return None
    with open(scored, encoding="utf-8") as f:
        return json.load(f)["bleu"]


def summarize(a, job: dict) -> dict:
    with open(os.path.join(job["run_dir"], "train.log"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    if job.get("cmd") is None:  # --collect: the command is the log's last "# " line
        job["cmd"] = shlex.split([line for line in lines if line.startswith("# ")][-1][2:])
    parsed = parse_log(lines)
    params = next((int(m.group(1).replace(",", "")) for m in map(PARAMS.search, lines) if m), None)
    at_every = [v for v in parsed["valid"] if int(v["num_updates"]) % a.every == 0]
    losses = {str(int(v["num_updates"])): v["loss"] for v in at_every}
    # Forward evaluations per solve in validation, per side (one block per side: NFE per batch).
    nfe = {side: {str(int(v["num_updates"])): v[f"nfe_{side}_fwd"] for v in at_every
                  if f"nfe_{side}_fwd" in v} for side in ("enc", "dec")}
    return {"name": job["name"], "seed": job["seed"], "params": params,
            "f_evals_per_token": ROWS[job["name"]][1], "loss_at_updates": losses,
            "valid_nfe_at_updates": {k: v for k, v in nfe.items() if v},
            "bleu_test2016": None, "lr": row_lr(a, job["name"]), "max_tokens": a.max_tokens,
            "updates": max((int(v["num_updates"]) for v in parsed["valid"]), default=0), "exit_code": job["proc"].returncode if job.get("proc") else None,
            "train_seconds": round(time.time() - job["t0"]) if job.get("t0") else None,
            "command_line": command_line(job["cmd"])}


def run_all(a) -> List[dict]:
    queue = [(n, s) for s in a.seeds for n in a.rows]
    running, rows = [], []
    while queue or running:
        while queue and len(running) < a.parallel:
            running.append(start(a, *queue.pop(0)))
        time.sleep(2)
        for job in [j for j in running if j["proc"].poll() is not None]:
            running.remove(job)
            job["log"].close()
            row = summarize(a, job)
            print(f"{PROG}: {job['name']} seed {job['seed']}: exit {row['exit_code']}, "
                  f"valid loss {row['loss_at_updates']}", flush=True)
            rows.append(row)
    if a.bleu:  # after the training, so that generation never shares the machine with it
        for row in rows:
            if row["exit_code"] == 0:
                row["bleu_test2016"] = bleu(a, run_dir_of(a, row["name"], row["seed"]))
    return rows


def collect(a) -> List[dict]:
    rows = []
    for s in a.seeds:
        for n in a.rows:
            run_dir = run_dir_of(a, n, s)
            if os.path.isfile(os.path.join(run_dir, "train.log")):
                rows.append(summarize(a, dict(name=n, seed=s, run_dir=run_dir)))
    if a.bleu:
        for row in rows:
            row["bleu_test2016"] = bleu(a, run_dir_of(a, row["name"], row["seed"]))
    return rows


def row_order(name: str) -> int:
    """Tables and legends list rows in ROWS's order; names from an older JSON come last."""
    return list(ROWS).index(name) if name in ROWS else len(ROWS)


def render(rows: List[dict], by_seed: bool = False) -> List[str]:
    """One line per row and seed, or (``by_seed``) one per row and rate with the seeds side
    by side as ``s1 / s2`` (``-`` where a seed did not run that row)."""
    counts = sorted({int(u) for r in rows for u in r["loss_at_updates"]})
    if not by_seed:
        header = ["row", "seed", "params", "f/token", "lr", *[f"loss@{u}" for u in counts], "BLEU"]
        body = [[r["name"], r["seed"], r["params"], r["f_evals_per_token"], r.get("lr"),
                 *[r["loss_at_updates"].get(str(u), "") for u in counts],
                 "" if r["bleu_test2016"] is None else r["bleu_test2016"]] for r in rows]
        return table(header, body)
    seeds = sorted({r["seed"] for r in rows})
    groups: Dict[tuple, Dict[int, dict]] = {}
    for r in rows:
        groups.setdefault((r["name"], r.get("lr")), {})[r["seed"]] = r

    def cell(by: Dict[int, dict], get) -> str:
        return " / ".join("-" if by.get(s) is None or get(by[s]) in (None, "") else str(get(by[s]))
                          for s in seeds)

    tag = " / ".join(f"s{s}" for s in seeds)
    header = ["row", "params", "f/token", "lr", *[f"loss@{u} ({tag})" for u in counts], f"BLEU ({tag})"]
    body = []
    order = sorted(groups, key=lambda k: (k[1] or 0, row_order(k[0])))
    for name, lr in order:
        by = groups[(name, lr)]
        first = next(iter(by.values()))
        body.append([f"`{name}`", f"{first['params']:,}" if first["params"] else "", first["f_evals_per_token"],
                     f"{lr:g}" if lr is not None else "",
                     *[cell(by, lambda r, u=u: r["loss_at_updates"].get(str(u))) for u in counts],
                     cell(by, lambda r: r["bleu_test2016"])])
    return table(header, body)


def render_by_lr(rows: List[dict], update: int) -> List[str]:
    """The learning-rate probes: one line per row, one column per peak rate, the valid loss
    at ``update`` of each seed (``s1 / s2``; ``-`` where that seed did not run the rate)."""
    seeds = sorted({r["seed"] for r in rows})
    lrs = sorted({r.get("lr") for r in rows if r.get("lr") is not None})
    names = sorted({r["name"] for r in rows}, key=row_order)
    at = {(r["name"], r.get("lr"), r["seed"]): r["loss_at_updates"].get(str(update)) for r in rows}
    lrs = [lr for lr in lrs if any(v is not None for (_, x, _), v in at.items() if x == lr)]
    body = []
    for n in names:
        if all(at.get((n, lr, s)) is None for lr in lrs for s in seeds):
            continue
        body.append([f"`{n}`", *[" / ".join("-" if at.get((n, lr, s)) is None else str(at[(n, lr, s)])
                                            for s in seeds) for lr in lrs]])
    tag = " / ".join(f"s{s}" for s in seeds)
    return table(["row", *[f"lr {lr:g} ({tag})" for lr in lrs]], body)


def figure(rows: List[dict], path: str, lrs: Optional[List[float]] = None) -> None:
    """One column per peak learning rate (``lrs``, default all): valid loss against updates
    (top) and its difference to ``classic-1layer`` of the same seed and rate (bottom: below
    zero is better than the classic). Rows are only compared within their own rate."""
    plt = pyplot()

    lrs = sorted({r.get("lr") for r in rows if r.get("lr") is not None} if lrs is None else lrs)
    drawn = [r for r in rows if r.get("lr") in lrs and r["loss_at_updates"]]
    if not drawn:
        raise SystemExit(f"{PROG}: error: no rows at learning rate(s) {', '.join(f'{x:g}' for x in lrs)}")
    names = sorted({r["name"] for r in drawn}, key=row_order)
    colour = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    classic = {(r["seed"], r.get("lr")): r["loss_at_updates"] for r in rows if r["name"] == CLASSIC}
    panels = 2 if classic else 1  # no classic row: nothing to take differences to
    fig, axes = plt.subplots(panels, len(lrs), figsize=(6.5 * len(lrs), 4.5 * panels), squeeze=False)
    for col, lr in enumerate(lrs):
        ax, dx = axes[0][col], axes[-1][col] if classic else None
        for r in (r for r in drawn if r.get("lr") == lr):
            pts = sorted((int(u), v) for u, v in r["loss_at_updates"].items())
            style = dict(marker="o", color=colour[r["name"]], linestyle="-" if r["seed"] == 1 else "--")
            ax.plot(*zip(*pts), label=f"{r['name']} s{r['seed']}", **style)
            ref = classic.get((r["seed"], lr))
            other_dropout = "--dropout" in ROWS.get(r["name"], ([], 0))[0]  # not the classic's model
            if dx is not None and ref and r["name"] != CLASSIC and not other_dropout:
                diff = [(u, v - ref[str(u)]) for u, v in pts if str(u) in ref]
                if diff:
                    dx.plot(*zip(*diff), **style)
        ax.set_title(f"peak lr {lr:g}: valid loss (Multi30k, mini)")
        ax.set_ylabel("valid loss (bits)")
        for a in (ax, dx) if dx is not None else (ax,):
            a.set_xlabel("updates")
            a.grid(alpha=0.3)
        if dx is not None:
            dx.set_title(f"peak lr {lr:g}: difference to {CLASSIC} (same seed)")
            dx.axhline(0, color="black", linewidth=0.8)
            dx.set_ylabel("valid loss difference (bits)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def store(path: str, rows: List[dict], meta: dict) -> None:
    """``rows`` into the JSON at ``path`` under JSON_KEY, replacing earlier rows of the same
    name and seed; the other keys of the file are kept."""
    data = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    new = {(r["name"], r["seed"], r.get("lr")) for r in rows}
    kept = [r for r in data.get(JSON_KEY, []) if (r["name"], r["seed"], r.get("lr")) not in new]
    data[JSON_KEY] = kept + rows
    data.setdefault(JSON_KEY + "_runs", []).append(meta)
    write_json(path, data)


def parse_lr(items: List[str]) -> Dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in ROWS or not value:
            raise SystemExit(f"{PROG}: error: --lr takes NAME=LR with NAME one of {', '.join(ROWS)}, "
                             f"got {item!r}")
        out[name] = float(value)
    return out


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--data-bin", metavar="DIR")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "equal-updates"))
    p.add_argument("--rows", nargs="+", choices=list(ROWS), metavar="NAME",
                   help="rows to train or collect (default: the comparison's rows); with --render: "
                        "only these rows (default all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--every", type=int, default=500, help="validate every N updates (default 500)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--default-lr", type=float, default=4e-3,
                   help="peak learning rate of rows without --lr (default 4e-3)")
    p.add_argument("--lr", nargs="+", default=[], metavar="NAME=LR")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bleu", action="store_true", help="test2016 BLEU of each row's last checkpoint")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep a checkpoint every --every updates (for experiments.analysis.error_drivers)")
    p.add_argument("--json", metavar="PATH", help="write the rows under 'equal_updates' here")
    p.add_argument("--figure", metavar="PNG", help="valid loss against updates, all rows")
    p.add_argument("--by-lr", type=int, metavar="UPDATES",
                   help="with --render: the learning-rate probes, valid loss at UPDATES, one column per rate")
    p.add_argument("--only-lr", nargs="+", type=float, metavar="LR",
                   help="with --render: only rows at these peak learning rates, in the table and "
                        "in --figure (one column each)")
    p.add_argument("--render", metavar="JSON", help="print the table of a JSON written before")
    p.add_argument("--by-seed", action="store_true",
                   help="with --render: one line per row and rate, the seeds side by side")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: the table (and --bleu, --json, --figure) from OUT's logs")
    return p


def main(argv=None) -> int:
    a = arg_parser().parse_args(argv)
    a.lr_by_row = parse_lr(a.lr)
    chosen_rows, a.rows = a.rows, a.rows or DEFAULT_ROWS
    if a.render:
        with open(a.render, encoding="utf-8") as f:
            rows = json.load(f).get(JSON_KEY, [])
        if chosen_rows:
            rows = [r for r in rows if r["name"] in chosen_rows]
        if a.only_lr:
            rows = [r for r in rows if r.get("lr") in a.only_lr]
        if not rows:
            named = f" named {', '.join(chosen_rows)}" if chosen_rows else ""
            at = f" at learning rate(s) {', '.join(f'{x:g}' for x in a.only_lr)}" if a.only_lr else ""
            raise SystemExit(f"{PROG}: error: {a.render} has no rows{named}{at}")
        print("\n".join(render_by_lr(rows, a.by_lr) if a.by_lr else render(rows, a.by_seed)))
        if a.figure:
            figure(rows, a.figure, a.only_lr)
        return 0
    if not a.data_bin:
        raise SystemExit(f"{PROG}: error: --data-bin is required (or --render JSON)")
    if a.updates % a.every:
        raise SystemExit(f"{PROG}: error: --updates {a.updates} is not a multiple of --every {a.every}")
    if a.dry_run:
        for s in a.seeds:
            for n in a.rows:
                cmd = command(a, n, s, row_lr(a, n), run_dir_of(a, n, s))
                print(" ".join(shlex.quote(c) for c in cmd))
        return 0
    if not os.path.isdir(a.data_bin):
        raise SystemExit(f"{PROG}: error: {a.data_bin}: data-bin directory not found")
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    rows = collect(a) if a.collect else run_all(a)
    print("\n".join(render(rows)))
    if a.figure:
        figure(rows, a.figure, a.only_lr)
    if a.json:
        store(a.json, rows, {"command": command_line(sys.argv), "started": started,
                             "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                             "parallel": a.parallel, "threads": a.threads,
                             "load_average_at_end": os.getloadavg()})
    return 0 if all(r["exit_code"] in (0, None) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
