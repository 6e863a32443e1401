#!/usr/bin/env python3
"""Why an adaptive NODE's evaluations grow as it learns: which positions and which stages of
the Runge-Kutta step carry the solver's error estimate, checkpoint after checkpoint.

For each checkpoint of a run (fairseq's checkpoint_E_U.pt files, e.g. from
``scripts/equal_updates.py --keep-checkpoints``), the forward solves of every ODE block on the
first --sentences sentences of a split are run again with each step watched. A step's scaled
error e = dt sum_i c_err_i k_i / (atol + rtol max(|y0|, |y1|)) (k_i its stages) is the vector
whose RMS over the real positions is the ratio the controller compares with 1. It is split

- by stage: s_i = dt c_err_i k_i / tol sums to e, and stage i's share of ||e||^2 is
  <s_i, e> / ||e||^2 (the shares sum to 1; a negative share cancels the others);
- by position: each real position's share of ||e||^2, how much the top 1% and 10% of
  positions carry, and the shares of the first position, the last (the end of sentence) and
  the rest (which does not depend on how long the sentences are).

Shares are weighted by each accepted step's ||e||^2 over the block's solves. NFE, accepted and
rejected steps per solve are reported beside. Evaluation mode, no dropout: the solves of
validation, which are the training solves' without their dropout masks.

  python scripts/error_drivers.py runs/adaptive-probes/adaptive-dopri5-seed1/checkpoints \
      runs/adaptive-probes/adaptive-dopri5-err-local-seed1/checkpoints --data-bin data-bin/multi30k_en_de \
      --json docs/error_drivers.json --figure docs/figures/error_drivers.png
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import sys
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ..files import command_line, pyplot

PROG = "error_drivers"
SIDES = ("encoder", "decoder")
CHECKPOINT = re.compile(r"checkpoint_(\d+)_(\d+)\.pt$")


PARTS = ("self_attn", "encoder_attn", "ffn")  # pre-norm dynamics: f is the sum of their outputs


class SubLayerOutputs:
    """The outputs of a pre-norm dynamics' sub-layers at each evaluation (forward hooks), so
    that each stage k_i splits into self-attention + encoder-attention + feed-forward parts
    (with dropout off, as here, they add up to f exactly)."""

    def __init__(self, dynamics: nn.Module):
        self.parts: Dict[str, List[Tensor]] = {}
        self.handles = []
        if getattr(dynamics, "post_norm", True):
            return  # the study's form normalises f: no sum to split
        modules = dict(self_attn=dynamics.self_attn, encoder_attn=dynamics.encoder_attn, ffn=dynamics.fc2)
        for name, module in modules.items():
            if module is None:
                continue
            self.parts[name] = []

            def hook(_, __, out, name=name):
                self.parts[name].append(out[0] if isinstance(out, tuple) else out)
            self.handles.append(module.register_forward_hook(hook))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class WatchedDynamics(nn.Module):
    """The solver's function with every evaluation kept and the steps told apart (torchdiffeq
    calls callback_step before each trial step, then accept or reject)."""

    def __init__(self, func: nn.Module, new_stages: int):
        super().__init__()
        self.func = func
        self.new_stages = new_stages  # evaluations a trial step makes after its first stage
        self.evals: List[Tensor] = []
        self.f0_index = 0  # which evaluation is the first stage of the next trial step
        self.trial = None
        self.ratio_input: Optional[Tensor] = None  # what the norm last saw: the scaled error
        self.accepted: List[dict] = []
        self.rejected = 0

    def forward(self, t, y, **inputs):
        out = self.func(t, y, **inputs)
        self.evals.append(out)
        return out

    def callback_step(self, t0, y0, dt):
        self.trial = (y0, dt, len(self.evals), self.f0_index)

    def callback_accept_step(self, t0, y0, dt):
        y0, dt, start, first = self.trial
        indices = [first] + list(range(start, start + self.new_stages))
        self.accepted.append(dict(y0=y0, dt=dt, stages=[self.evals[i] for i in indices],
                                  indices=indices, scaled=self.ratio_input))
        self.f0_index = len(self.evals) - 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def _tableau(method: str):
    from odeint_ext.error_estimate import _torchdiffeq_tableau
    return _torchdiffeq_tableau(method)


def stage_terms(step: dict, method: str, rtol: float, atol: float):
    """(s_i = dt c_err_i k_i / tol for each stage of an accepted step, tol): the terms sum to
    its scaled error; tol as torchdiffeq's controller computes it, from y0 and the step's
    solution."""
    _, _, c_sol, c_error = _tableau(method)
    y0, dt, ks = step["y0"], step["dt"], step["stages"]
    y1 = y0 + sum(float(c) * dt * k for c, k in zip(c_sol, ks))
    tol = atol + rtol * torch.max(y0.abs(), y1.abs())
    return [float(c) * dt * k / tol for c, k in zip(c_error, ks)], tol


def part_shares(step: dict, method: str, tol: Tensor, outputs: SubLayerOutputs,
                keep: Optional[Tensor], e: Tensor) -> Dict[str, float]:
    """Each sub-layer's share <e_part, e> / ||e||^2 of an accepted step's scaled error."""
    if not outputs.parts:
        return {}
    _, _, _, c_error = _tableau(method)
    dt = step["dt"]
    mask = 1.0 if keep is None else keep
    total = (e.pow(2) * mask).sum()
    shares = {}
    for name, outs in outputs.parts.items():
        part = sum(float(c) * dt * outs[i].to(e.dtype) * mask for c, i in zip(c_error, step["indices"])) / tol
        shares[name] = float((part * e * mask).sum() / total)
    return shares


def step_shares(step: dict, terms: List[Tensor], keep: Optional[Tensor]) -> dict:
    """One accepted step's ||e||^2 over real positions, its stage shares and per-position
    squares (T x B, 0 at pads)."""
    e = sum(terms)
    mask = torch.ones(e.shape[:-1], dtype=e.dtype) if keep is None else keep[..., 0].to(e.dtype)
    per_position = e.pow(2).sum(-1) * mask
    total = per_position.sum()
    stages = [float(((s * e).sum(-1) * mask).sum() / total) for s in terms]
    return dict(total=float(total), stages=stages, per_position=per_position, mask=mask,
                recorded=step["scaled"])


def position_groups(per_position: Tensor, mask: Tensor) -> Dict[str, float]:
    """Shares of one step's ||e||^2: the top 1% / 10% of real positions, the first position
    of each sentence, the last (the end of sentence), the rest."""
    values = per_position[mask > 0]
    total = float(values.sum())
    ranked = values.sort(descending=True).values
    top = {f"top{p}pct": float(ranked[:max(1, round(len(ranked) * p / 100))].sum()) / total
           for p in (1, 10)}
    lengths = mask.sum(0).long()  # real positions per sentence (T x B, left-aligned real rows)
    first = last = 0.0
    for b in range(mask.shape[1]):
        rows = mask[:, b].nonzero().flatten()
        first += float(per_position[rows[0], b])
        if lengths[b] > 1:
            last += float(per_position[rows[-1], b])
    return dict(top, first=first / total, last=last / total, rest=1 - (first + last) / total)


def analyse_block(block, calls: List[tuple]) -> dict:
    """The watched re-solve of each captured forward of ``block`` and the shares."""
    s = block.solver
    alpha, _, _, _ = _tableau(s.method)
    sums = dict(weight=0.0, stages=[0.0] * (len(alpha) + 1), top1pct=0.0, top10pct=0.0,
                first=0.0, last=0.0, rest=0.0)
    parts: Dict[str, float] = {}
    nfe, accepted, rejected, ratios, worst = [], [], [], [], []
    for h0, padding_mask, inputs in calls:
        func, y0, solve_inputs, norm, keep = block.solver_problem(h0, padding_mask, **inputs)
        watched = WatchedDynamics(func, len(alpha))
        base = norm if norm is not None else (lambda x: x.pow(2).mean().sqrt())

        def recording(x, base=base, watched=watched):
            watched.ratio_input = x
            return base(x)

        outputs = SubLayerOutputs(block.dynamics)
        try:
            s.solve(watched, y0, inputs=solve_inputs, norm=recording, enforce_budget=False)
        finally:
            outputs.close()
        nfe.append(len(watched.evals))
        accepted.append(len(watched.accepted))
        rejected.append(watched.rejected)
        for step in watched.accepted:
            terms, tol = stage_terms(step, s.method, s.rtol, s.atol)
            e = sum(terms)
            shares = step_shares(step, terms, keep)
            if step["scaled"] is not None:  # the decomposition is the controller's own error
                torch.testing.assert_close(e, step["scaled"], rtol=1e-3, atol=1e-4)
            w = shares["total"]
            for name, share in part_shares(step, s.method, tol, outputs, keep, e).items():
                parts[name] = parts.get(name, 0.0) + w * share
            ratios.append(float(base(e)))
            sums["weight"] += w
            for i, share in enumerate(shares["stages"]):
                sums["stages"][i] += w * share
            for key, share in position_groups(shares["per_position"], shares["mask"]).items():
                sums[key] += w * share
            worst.append(float(shares["per_position"].max() / (w / shares["mask"].sum())))
    weight = sums.pop("weight") or 1.0
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return dict(method=s.method, rtol=s.rtol, atol=s.atol, solves=len(calls),
                nfe_per_solve=mean(nfe), accepted_per_solve=mean(accepted),
                rejected_per_solve=mean(rejected), mean_accepted_ratio=mean(ratios),
                worst_position_over_mean=mean(worst),
                stage_shares=[round(v / weight, 4) for v in sums.pop("stages")],
                sublayer_shares={k: round(v / weight, 4) for k, v in parts.items()},
                position_shares={k: round(v / weight, 4) for k, v in sums.items()})


def capture_calls(model, sample) -> Dict[str, List[tuple]]:
    """Each side's ODE block forwards (their h0, padding mask and inputs) in one model forward."""
    from node_transformer.ode_block import ODEBlock

    calls: Dict[str, List[tuple]] = {side: [] for side in SIDES}
    handles = []
    for side in SIDES:
        for m in getattr(model, side).modules():
            if isinstance(m, ODEBlock):
                def hook(module, args, kwargs, side=side):
                    kwargs = dict(kwargs)
                    padding_mask = kwargs.pop("padding_mask", None)
                    calls[side].append((module, args[0], padding_mask, kwargs))
                handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(**sample["net_input"])
    finally:
        for h in handles:
            h.remove()
    return calls


def load_samples(task, split: str, sentences: int, max_tokens: int) -> List[dict]:
    task.load_dataset(split)
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=max_tokens, seed=1,
                                  ignore_invalid_inputs=True).next_epoch_itr(shuffle=False)
    samples, seen = [], 0
    for sample in itr:
        if seen >= sentences:
            break
        samples.append(sample)
        seen += sample["nsentences"]
    return samples


def analyse_checkpoint(path: str, data_bin: str, split: str, sentences: int, max_tokens: int) -> dict:
    from fairseq import checkpoint_utils

    import node_transformer  # noqa: F401  (registers the model and task)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data_bin})
    model = models[0].eval()
    per_side: Dict[str, List[tuple]] = {side: [] for side in SIDES}
    with torch.no_grad():
        for sample in load_samples(task, split, sentences, max_tokens):
            for side, calls in capture_calls(model, sample).items():
                per_side[side].extend(calls)
    out = {}
    for side, calls in per_side.items():
        if calls:
            block = calls[0][0]
            with torch.no_grad():
                out[side] = analyse_block(block, [c[1:] for c in calls])
    m = CHECKPOINT.search(path)
    return dict(checkpoint=os.path.basename(path), epoch=int(m.group(1)) if m else None,
                updates=int(m.group(2)) if m else None, sides=out)


def checkpoints_in(folder: str) -> List[str]:
    found = [p for p in glob.glob(os.path.join(folder, "checkpoint_*_*.pt")) if CHECKPOINT.search(p)]
    return sorted(found, key=lambda p: int(CHECKPOINT.search(p).group(2)))


def run_name(path: str) -> str:
    """The run a checkpoint belongs to: the folder above its checkpoints/ folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == "checkpoints":
        folder = os.path.dirname(folder)
    return os.path.basename(folder)


def render(rows: List[dict]) -> List[str]:
    lines = []
    for side in SIDES:
        lines.append(f"{side}: run | updates | NFE/solve | accepted | rejected | mean ratio | stage shares | "
                     "top 1% / 10% positions | first / last / rest | worst position / mean | sub-layer shares")
        for r in rows:
            d = r["sides"].get(side)
            if d is None:
                continue
            p = d["position_shares"]
            lines.append(f"  {r.get('run', '')} | {r['updates']} | {d['nfe_per_solve']:.1f} | "
                         f"{d['accepted_per_solve']:.2f} | {d['rejected_per_solve']:.2f} | "
                         f"{d['mean_accepted_ratio']:.3f} | "
                         f"{' '.join(f'{v:+.2f}' for v in d['stage_shares'])} | "
                         f"{p['top1pct']:.2f} / {p['top10pct']:.2f} | "
                         f"{p['first']:.2f} / {p['last']:.2f} / {p['rest']:.2f} | "
                         f"{d['worst_position_over_mean']:.1f} | "
                         + " ".join(f"{k} {v:+.2f}" for k, v in d.get("sublayer_shares", {}).items()))
    return lines


def figure(rows: List[dict], path: str) -> None:
    """Per run (colour family) and side (line style): NFE per solve, the decoder's sub-layer
    shares, the share of the top 10% of positions."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    runs = list(dict.fromkeys(r.get("run", "") for r in rows))
    markers = "osv^D"
    for n, run in enumerate(runs):
        mine = [r for r in rows if r.get("run", "") == run]
        for side, style in zip(SIDES, ("--", "-")):
            got = [r for r in mine if side in r["sides"]]
            if not got:
                continue
            ups = [r["updates"] for r in got]
            m = markers[n % len(markers)]
            axes[0].plot(ups, [r["sides"][side]["nfe_per_solve"] for r in got], style, marker=m,
                         label=f"{run} {side}")
            axes[2].plot(ups, [r["sides"][side]["position_shares"]["top10pct"] for r in got], style,
                         marker=m, label=f"{run} {side}")
            if side == "decoder":
                for name in got[-1]["sides"][side].get("sublayer_shares", {}):
                    axes[1].plot(ups, [r["sides"][side]["sublayer_shares"][name] for r in got], style,
                                 marker=m, label=f"{run} {name}")
    axes[0].set(title="forward evaluations per solve", xlabel="updates")
    axes[1].set(title="decoder: sub-layer shares of ||error||^2", xlabel="updates")
    axes[2].set(title="share of ||error||^2 in the top 10% of positions", xlabel="updates")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+",
                   help="folders of checkpoint_E_U.pt files (one run each), or .pt files")
    p.add_argument("--data-bin", required=True)
    p.add_argument("--split", default="valid")
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--figure", metavar="PNG")
    a = p.parse_args(argv)
    paths = []
    for given in a.checkpoints:
        found = [given] if given.endswith(".pt") else checkpoints_in(given)
        if not found:
            print(f"{PROG}: error: no checkpoint_E_U.pt in {given}", file=sys.stderr)
            return 2
        paths.extend(found)
    rows = []
    for path in paths:
        torch.manual_seed(1)
        rows.append(dict(run=run_name(path), **analyse_checkpoint(path, a.data_bin, a.split,
                                                                   a.sentences, a.max_tokens)))
    print("\n".join(render(rows)))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"command_line": command_line(["scripts/error_drivers.py", *(argv or sys.argv[1:])]),
                       "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                       "rows": rows}, f, indent=1)
    if a.figure:
        figure(rows, a.figure)
    return 0
