#!/usr/bin/env python3
"""How much work the ODE solver does per sentence, and what the flow looks like.

    analyze_nfe.py CHECKPOINT --data-bin DIR [--subset valid] [--max-sentences N]
                   [--no-backward] [--trajectories K] [--points P] [--out DIR] [--cpu]

Each sentence of the subset is solved alone (a batch of one: an adaptive solver's step size
is shared by a batch, so only then is the NFE the sentence's own). For each: the source and
target length, the teacher-forced loss on its reference (nll per target token, in bits, like
fairseq's nll_loss), and the function evaluations of every NODE side: forward (nfe_enc_fwd,
nfe_dec_fwd) and, unless --no-backward, the adjoint backward of that loss (nfe_enc_bwd,
nfe_dec_bwd), the backward a training step runs. The model is in eval mode (no dropout, no
STEER end-time jitter), so the numbers are the solver's response to the sentence alone.

Writes to --out (default: nfe-SUBSET beside the checkpoint):
  nfe.csv             one row per sentence
  summary.json        means, and Spearman rank correlations of each NFE column with source
                      length, with loss, and with loss at fixed length (partial correlation):
                      the study's open question, whether adaptive depth spends more
                      evaluations on harder sentences
  nfe_vs_length.png, nfe_vs_loss.png    the scatter plots
  trajectories.png    ||h(t)|| and ||f(t, h(t))|| (mean over tokens of the L2 norm over
                      channels) along ODE time for --trajectories sentences (spread over
                      source lengths), each ODE block of each side, on --points times
A sentence whose solve passes --node-max-nfe is kept with empty NFE and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Dict, List, Optional

from experiments.files import pyplot, repo_relative

PROG = "analyze_nfe"
NFE_COLUMNS = ("nfe_enc_fwd", "nfe_dec_fwd", "nfe_enc_bwd", "nfe_dec_bwd")


class AnalysisError(Exception):
    """Reported as one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# statistics (numpy only)


def _ranks(x):
    import numpy as np

    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    # ties get their mean rank
    for v in np.unique(x):
        idx = x == v
        if idx.sum() > 1:
            ranks[idx] = ranks[idx].mean()
    return ranks


def spearman(x, y) -> Optional[float]:
    import numpy as np

    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def partial_spearman(x, y, z) -> Optional[float]:
    """Rank correlation of x and y with z held fixed (first-order partial correlation)."""
    rxy, rxz, ryz = spearman(x, y), spearman(x, z), spearman(y, z)
    if None in (rxy, rxz, ryz):
        return None
    den = math.sqrt(max((1 - rxz ** 2) * (1 - ryz ** 2), 0.0))
    return None if den < 1e-12 else (rxy - rxz * ryz) / den


# --------------------------------------------------------------------------------------------
# model


def load(checkpoint: str, data_bin: str, subset: str, cpu: bool, overrides: Dict[str, object]):
    if not os.path.isfile(checkpoint):
        raise AnalysisError(f"{checkpoint}: checkpoint not found")
    if not os.path.isdir(data_bin):
        raise AnalysisError(f"{data_bin}: data-bin directory not found")
    import torch  # the slow imports only now: a mistyped path is answered at once

    import node_transformer  # noqa: F401  (registers model and task, allow-lists checkpoints)
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": os.path.abspath(data_bin), **overrides})
    model = models[0]
    device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    model.to(device).eval()
    try:
        task.load_dataset(subset)
    except FileNotFoundError as e:
        raise AnalysisError(f"{data_bin}: no subset {subset!r} ({e})") from None
    return model, task, task.dataset(subset), device


def blocks_by_side(model) -> Dict[str, list]:
    from node_transformer.ode_block import ODEBlock

    out = {}
    for side, tag in (("encoder", "enc"), ("decoder", "dec")):
        mod = getattr(model, side, None)
        found = [m for m in mod.modules() if isinstance(m, ODEBlock)] if mod is not None else []
        if found:
            out[tag] = found
    return out


def one_sentence(model, dataset, i: int, device: str):
    import torch
    from fairseq import utils

    sample = dataset.collater([dataset[i]])
    return utils.apply_to_sample(lambda t: t.to(device) if torch.is_tensor(t) else t, sample)


def measure(model, task, dataset, device: str, max_sentences: Optional[int], backward: bool,
            log_every: int = 100) -> List[dict]:
    import torch

    from node_transformer.task import collect_nfe, reset_nfe
    from odeint_ext import MaxNFEExceeded

    pad = task.target_dictionary.pad()
    n = len(dataset) if not max_sentences else min(max_sentences, len(dataset))
    rows = []
    for i in range(n):
        sample = one_sentence(model, dataset, i, device)
        model.zero_grad(set_to_none=True)
        reset_nfe(model)
        row = {"id": i, "src_len": int(sample["net_input"]["src_lengths"][0]),
               "tgt_len": int(sample["target"].ne(pad).sum()), "nll_bits": None,
               "over_budget": 0}
        try:
            with torch.set_grad_enabled(backward):
                out = model(**sample["net_input"])
                lprobs = model.get_normalized_probs(out, log_probs=True)
                target = sample["target"]
                nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                mask = target.ne(pad)
                loss = nll[mask].sum()
                row["nll_bits"] = float(loss.detach()) / float(mask.sum()) / math.log(2)
                if backward:
                    loss.backward()
            row.update(collect_nfe(model, backward=backward))
        except MaxNFEExceeded:
            row["over_budget"] = 1
        rows.append(row)
        if log_every and (i + 1) % log_every == 0:
            print(f"{PROG}: {i + 1}/{n} sentences", file=sys.stderr)
    model.zero_grad(set_to_none=True)
    return rows


def trajectories(model, dataset, device: str, ids: List[int], points: int) -> List[dict]:
    """For each sentence, each ODE block: times, ||h(t)|| and ||f(t, h(t))||."""
    import torch

    from odeint_ext import odeint_ext

    blocks = blocks_by_side(model)
    captured = []

    def hook(block, args, kwargs):
        captured.append((block, args[0].detach(), dict(kwargs)))

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True)
               for side in blocks.values() for b in side]
    names = {id(b): f"{tag} block {k}" for tag, side in blocks.items() for k, b in enumerate(side)}
    out = []
    try:
        for i in ids:
            sample = one_sentence(model, dataset, i, device)
            captured.clear()
            with torch.no_grad():
                model(**sample["net_input"])
            for block, h0, inputs in list(captured):
                inputs.pop("padding_mask", None)  # the block's, not the dynamics' (one sentence: no pads)
                s = block.solver
                ts = torch.linspace(s.ts[0], s.ts[-1], points, dtype=h0.dtype, device=h0.device)
                with torch.no_grad():
                    hs = odeint_ext(block.dynamics, h0, ts, inputs=inputs, rtol=s.rtol,
                                    atol=s.atol, method=s.method, options=s.options())
                    fs = [block.dynamics(t, h, **inputs) for t, h in zip(ts, hs)]
                out.append({
                    "id": i, "src_len": int(sample["net_input"]["src_lengths"][0]),
                    "block": names[id(block)], "t": ts.tolist(),
                    "h_norm": [float(h.norm(dim=-1).mean()) for h in hs],
                    "f_norm": [float(f.norm(dim=-1).mean()) for f in fs],
                })
    finally:
        for h in handles:
            h.remove()
    return out


# --------------------------------------------------------------------------------------------
# report


def summarize(rows: List[dict], columns: List[str]) -> dict:
    import numpy as np

    ok = [r for r in rows if not r["over_budget"]]
    summary = {"sentences": len(rows), "over_budget": len(rows) - len(ok), "columns": {}}
    for c in columns:
        xs = [r for r in ok if r.get(c) is not None]
        if not xs:
            continue
        nfe = [r[c] for r in xs]
        length = [r["src_len"] for r in xs]
        loss = [r["nll_bits"] for r in xs]
        summary["columns"][c] = {
            "mean": float(np.mean(nfe)), "min": int(min(nfe)), "max": int(max(nfe)),
            "spearman_vs_src_len": spearman(nfe, length),
            "spearman_vs_loss": spearman(nfe, loss),
            "spearman_vs_loss_at_fixed_len": partial_spearman(nfe, loss, length),
        }
    return summary


def plot(rows: List[dict], columns: List[str], traj: List[dict], out: str) -> List[str]:
    plt = pyplot()

    written = []
    ok = [r for r in rows if not r["over_budget"]]
    for x, label, name in (("src_len", "source length (tokens)", "nfe_vs_length.png"),
                           ("nll_bits", "loss on the reference (bits per token)", "nfe_vs_loss.png")):
        fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.4), squeeze=False)
        for ax, c in zip(axes[0], columns):
            pts = [(r[x], r[c]) for r in ok if r.get(c) is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.6)
            rho = spearman([p[1] for p in pts], [p[0] for p in pts]) if pts else None
            ax.set_title(f"{c} (Spearman {rho:.2f})" if rho is not None else c, fontsize=9)
            ax.set_xlabel(label)
            ax.set_ylabel("function evaluations")
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
        written.append(name)
    if traj:
        block_names = list(dict.fromkeys(t["block"] for t in traj))  # encoder first
        fig, axes = plt.subplots(2, len(block_names), figsize=(4.5 * len(block_names), 6.5),
                                 squeeze=False)
        for col, b in enumerate(block_names):
            for t in (t for t in traj if t["block"] == b):
                lbl = f"sentence {t['id']} ({t['src_len']} tokens)"
                axes[0][col].plot(t["t"], t["h_norm"], label=lbl)
                axes[1][col].plot(t["t"], t["f_norm"], label=lbl)
            axes[0][col].set_title(f"{b}: ||h(t)||", fontsize=9)
            axes[1][col].set_title(f"{b}: ||f(t, h(t))||", fontsize=9)
            axes[1][col].set_xlabel("ODE time t")
            axes[0][col].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "trajectories.png"), dpi=110)
        plt.close(fig)
        written.append("trajectories.png")
    return written


def spread_ids(rows: List[dict], k: int) -> List[int]:
    """k sentences from shortest to longest source."""
    ordered = sorted(rows, key=lambda r: (r["src_len"], r["id"]))
    if k <= 0 or not ordered:
        return []
    if k >= len(ordered):
        return [r["id"] for r in ordered]
    return [ordered[round(j * (len(ordered) - 1) / (k - 1))]["id"] if k > 1 else ordered[0]["id"]
            for j in range(k)]


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--data-bin", required=True, metavar="DIR")
    p.add_argument("--subset", default="valid")
    p.add_argument("--max-sentences", type=int, default=None, help="the first N only")
    p.add_argument("--no-backward", action="store_true", help="forward NFE only (faster)")
    p.add_argument("--trajectories", type=int, default=4, metavar="K",
                   help="sentences whose ||h(t)||, ||f(t)|| are drawn (default 4; 0: none)")
    p.add_argument("--points", type=int, default=21, help="times on each trajectory (default 21)")
    p.add_argument("--out", metavar="DIR", help="default: nfe-SUBSET beside the checkpoint")
    p.add_argument("--cpu", action="store_true", help="even where CUDA is available")
    p.add_argument("--source-lang")
    p.add_argument("--target-lang")
    return p


def write_results(out: str, rows: List[dict], columns: List[str], summary: dict, traj: List[dict]) -> List[str]:
    """nfe.csv, summary.json, trajectories.json and the figures into ``out``; the figures' names."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "nfe.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["id", "src_len", "tgt_len", "nll_bits", *columns, "over_budget"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "trajectories.json"), "w", encoding="utf-8") as f:
        json.dump(traj, f)
    return plot(rows, columns, traj, out)


def print_summary(summary: dict, out: str, figures: List[str]) -> None:
    for c, s in summary["columns"].items():
        fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"  # noqa: E731
        print(f"{c}: mean {s['mean']:.1f} (min {s['min']}, max {s['max']}); Spearman vs source "
              f"length {fmt(s['spearman_vs_src_len'])}, vs loss {fmt(s['spearman_vs_loss'])}, "
              f"vs loss at fixed length {fmt(s['spearman_vs_loss_at_fixed_len'])}")
    print(f"{PROG}: {summary['sentences']} sentences ({summary['over_budget']} over budget) -> "
          f"{out}: nfe.csv, summary.json, trajectories.json, {', '.join(figures)}", file=sys.stderr)


def main(argv=None) -> int:
    p = arg_parser()
    a = p.parse_args(argv)
    if a.points < 2:
        p.error("--points must be at least 2")
    if a.max_sentences is not None and a.max_sentences < 1:
        p.error("--max-sentences must be at least 1")
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.checkpoint)), f"nfe-{a.subset}")
    overrides = {k: v for k, v in (("source_lang", a.source_lang), ("target_lang", a.target_lang)) if v}
    try:
        model, task, dataset, device = load(a.checkpoint, a.data_bin, a.subset, a.cpu, overrides)
        sides = blocks_by_side(model)
        if not sides:
            raise AnalysisError(f"{a.checkpoint}: the model has no ODE block (a classic Transformer)")
        rows = measure(model, task, dataset, device, a.max_sentences, not a.no_backward)
        columns = [c for c in NFE_COLUMNS if c[4:7] in sides and (not a.no_backward or c.endswith("fwd"))]
        traj = trajectories(model, dataset, device, spread_ids(rows, a.trajectories), a.points)
    except AnalysisError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    summary = summarize(rows, columns)
    summary.update(checkpoint=repo_relative(os.path.abspath(a.checkpoint)), subset=a.subset, device=device,
                   backward=not a.no_backward)
    print_summary(summary, out, write_results(out, rows, columns, summary, traj))
    return 0

if __name__ == "__main__":
    sys.exit(main())
