#!/usr/bin/env python3
"""Would torchode's per-sentence step sizes solve our batches in fewer evaluations?

    torchode_probe.py CHECKPOINT --data-bin DIR [--subset valid] [--batches N]
                      [--max-tokens 4096] [--json FILE]

torchdiffeq takes one step size for a whole batch, from one error norm over all its
sentences (here the RMS over real positions, odeint_ext's masked norm). torchode gives
every sentence its own step size and error norm, but still evaluates f on the whole batch
at every iteration until the slowest sentence is done. So a batch costs torchdiffeq its NFE
and torchode its number of f calls; torchode is worth a backend only if the second is
smaller (issue 16). This script answers that on a trained checkpoint: it runs the model
teacher-forced over batches of a subset as training builds them (eval mode, no dropout),
records each ODE block's initial state and inputs, and solves the same problem again with
torchode (same method and tolerances, same first step, per-sentence RMS over real
positions). It prints, per NODE side, the mean evaluations per batch of both, the steps
torchode's sentences took on their own (mean and largest), and each one's error against a
far tighter solve (torchdiffeq dopri5, tolerance 1e-6): fewer evaluations only count at a
similar error. A control solves with torchode once more under one norm for the whole batch, as
torchdiffeq does: the two controllers differ in details (step-size update, error scaling),
and the control shows which part of the difference is the per-sentence step size.

torchode is optional (``pip install torchode``; it is not a dependency of the project).
Only methods both libraries have (adaptive_heun = torchode's heun, dopri5) and dynamics
that ignore t (torchode gives every sentence its own t) can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from typing import Dict, List, Optional

PROG = "torchode_probe"
# odeint_ext / torchdiffeq method -> torchode's name for the same tableau
METHODS = {"adaptive_heun": "heun", "dopri5": "dopri5"}


class ProbeError(Exception):
    """Reported as one line, exit status 2."""


@contextmanager
def recording(blocks):
    """Record every forward of the given ODE blocks: (block, h0, padding_mask, inputs, NFE)."""
    calls = []
    originals = {}
    for block in blocks:
        originals[block] = block.forward

        def wrapped(h0, padding_mask=None, _block=block, _orig=block.forward, **inputs):
            out = _orig(h0, padding_mask=padding_mask, **inputs)
            calls.append({"block": _block, "h0": h0, "padding_mask": padding_mask,
                          "inputs": inputs, "nfe": _block.solves[-1].nfe_forward, "out": out})
            return out

        block.forward = wrapped
    try:
        yield calls
    finally:
        for block, forward in originals.items():
            block.forward = forward


def batch_first_problem(block, h0, padding_mask, inputs):
    """(f, y0, keep, norm) of the block's ODE in torchode's layout: a batch of sentences, each
    a flat vector of its Time x Channel state. f evaluates the block's dynamics on the
    whole batch, holds pads fixed, and ignores t; norm is the RMS over each sentence's real
    positions."""
    import torch

    T, B, C = h0.shape
    if padding_mask is not None:
        keep = (~padding_mask).t().unsqueeze(-1).to(h0.dtype)  # T x B x 1
    else:
        keep = h0.new_ones(T, B, 1)
    dynamics = block.dynamics
    t0 = block.ts[0].to(h0.dtype)

    def f(t, y):
        h = y.view(B, T, C).transpose(0, 1)
        out = dynamics(t0, h, **inputs) * keep
        return out.transpose(0, 1).reshape(B, T * C)

    flat_keep = keep.transpose(0, 1).expand(B, T, C).reshape(B, T * C)
    counts = flat_keep.sum(dim=1)

    def norm(x):
        return ((x.pow(2) * flat_keep).sum(dim=1) / counts).sqrt()

    def shared_norm(x):  # the batch's norm for every sentence: torchdiffeq's way
        return ((x.pow(2) * flat_keep).sum() / counts.sum()).sqrt().expand(B)

    y0 = h0.transpose(0, 1).reshape(B, T * C)
    return f, y0, norm, shared_norm


def reference(block, call, tol: float = 1e-6):
    """The recorded call's h(t1), solved far more tightly (torchdiffeq dopri5): what both
    solvers' errors are measured against."""
    import torch
    import torchdiffeq

    f, y0, _, _ = batch_first_problem(block, call["h0"], call["padding_mask"], call["inputs"])
    with torch.no_grad():
        y1 = torchdiffeq.odeint(f, y0, block.ts.to(y0.dtype), method="dopri5", rtol=tol, atol=tol)[-1]
    T, B, C = call["h0"].shape
    return y1.view(B, T, C).transpose(0, 1)


def relative_error(h, ref) -> float:
    return (h.float() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)


def solve_torchode(block, call, shared: bool = False, tol: Optional[float] = None) -> dict:
    """torchode's solve of a recorded call; ``shared``: one error norm for the whole batch
    (the control: isolates per-sentence step sizes from the two controllers' differences);
    ``tol``: rtol = atol = tol instead of the block's."""
    import torch
    import torchode as to

    s = block.solver
    method = METHODS.get(s.method)
    if method is None:
        raise ProbeError(f"method {s.method!r}: torchode has no counterpart here "
                         f"(comparable: {', '.join(METHODS)})")
    if getattr(block.dynamics, "time_dependent", False):
        raise ProbeError("time-dependent dynamics: torchode gives each sentence its own t, "
                         "which this comparison does not model")
    f, y0, norm, shared_norm = batch_first_problem(block, call["h0"], call["padding_mask"], call["inputs"])
    norm = shared_norm if shared else norm
    calls = [0]

    def counted(t, y):
        calls[0] += 1
        return f(t, y)

    B = y0.shape[0]
    t0, t1 = (float(x) for x in (block.ts[0], block.ts[-1]))
    t_eval = torch.tensor([t0, t1], dtype=y0.dtype, device=y0.device).expand(B, 2)
    term = to.ODETerm(counted)
    rtol, atol = (tol, tol) if tol is not None else (s.rtol, s.atol)
    controller = to.IntegralController(atol=atol, rtol=rtol, term=term, norm=norm)
    solver = to.AutoDiffAdjoint(to.interface.METHODS[method](term=term), controller,
                                max_steps=s.max_num_steps)
    dt0 = None
    if s.first_step is not None:
        dt0 = torch.full((B,), s.first_step, dtype=y0.dtype, device=y0.device)
    with torch.no_grad():
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval), dt0=dt0)
    T, _, C = call["h0"].shape
    status = sol.status.tolist()
    # n_f_evals counts every call for every sentence; a sentence's own work is its steps
    return {"calls": calls[0], "steps": sol.stats["n_steps"].tolist(),
            "failed": sum(1 for x in status if x != 0),
            "final": sol.ys[:, -1].view(B, T, C).transpose(0, 1)}


def check_inputs(checkpoint: str, data_bin: str) -> None:
    """Fail before any loading: the files, then the optional package."""
    if not os.path.isfile(checkpoint):
        raise ProbeError(f"{checkpoint}: checkpoint not found")
    if not os.path.isdir(data_bin):
        raise ProbeError(f"{data_bin}: data-bin directory not found")
    try:
        import torchode  # noqa: F401
    except ImportError:
        raise ProbeError("torchode is not installed (pip install torchode): it is an optional "
                         "dependency of this probe only") from None


def load(checkpoint: str, data_bin: str, subset: str, max_tokens: int):
    """(model in eval mode, batches of the subset as training builds them, unshuffled)."""
    import node_transformer  # noqa: F401
    from fairseq import checkpoint_utils, utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": os.path.abspath(data_bin)})
    model = models[0].eval()
    task.load_dataset(subset)
    itr = task.get_batch_iterator(dataset=task.dataset(subset), max_tokens=max_tokens, seed=1,
                                  max_positions=utils.resolve_max_positions(
                                      task.max_positions(), model.max_positions()))
    return model, itr.next_epoch_itr(shuffle=False)


def node_sides(model, checkpoint: str) -> Dict[str, list]:
    """{'enc' / 'dec': the side's ODE blocks}, only the sides that have some."""
    from node_transformer.ode_block import ode_blocks

    sides = {tag: ode_blocks(getattr(model, side)) for side, tag in (("encoder", "enc"), ("decoder", "dec"))}
    sides = {tag: blocks for tag, blocks in sides.items() if blocks}
    if not sides:
        raise ProbeError(f"{checkpoint}: the model has no ODE blocks")
    return sides


def compare(call) -> dict:
    """One recorded solve, solved again by torchode (per-sentence and shared norm) and
    tightly: the per-batch row."""
    block = call["block"]
    ode = solve_torchode(block, call)
    control = solve_torchode(block, call, shared=True)
    ref = reference(block, call)
    steps = ode["steps"]
    return {"sentences": call["h0"].shape[1], "tokens": call["h0"].shape[0],
            "nfe_torchdiffeq": call["nfe"], "calls_torchode": ode["calls"],
            "calls_torchode_shared_norm": control["calls"],
            "torchode_steps_mean": sum(steps) / len(steps), "torchode_steps_max": max(steps),
            "torchode_failed": ode["failed"],
            "error_torchdiffeq": relative_error(call["out"], ref),
            "error_torchode": relative_error(ode["final"], ref)}


def summarise(blocks: list, r: List[dict]) -> dict:
    """One side's rows as means and counts (the printed summary)."""
    n = len(r)
    solver = blocks[0].solver
    return {
        "solves": n,
        "method": solver.method,
        "rtol": solver.rtol, "atol": solver.atol,
        "mean_nfe_torchdiffeq": round(sum(x["nfe_torchdiffeq"] for x in r) / n, 2),
        "mean_calls_torchode": round(sum(x["calls_torchode"] for x in r) / n, 2),
        "mean_calls_torchode_shared_norm": round(sum(x["calls_torchode_shared_norm"] for x in r) / n, 2),
        "mean_torchode_steps_per_sentence": round(sum(x["torchode_steps_mean"] for x in r) / n, 2),
        "mean_torchode_steps_slowest_sentence": round(sum(x["torchode_steps_max"] for x in r) / n, 2),
        "batches_torchode_fewer": sum(x["calls_torchode"] < x["nfe_torchdiffeq"] for x in r),
        "batches_torchode_more": sum(x["calls_torchode"] > x["nfe_torchdiffeq"] for x in r),
        # largest |h(t1) - reference| over all positions, relative to max |reference|
        "mean_error_torchdiffeq": round(sum(x["error_torchdiffeq"] for x in r) / n, 4),
        "mean_error_torchode": round(sum(x["error_torchode"] for x in r) / n, 4),
        "torchode_failed_sentences": sum(x["torchode_failed"] for x in r),
    }


def probe(checkpoint: str, data_bin: str, subset: str, batches: int, max_tokens: int) -> dict:
    """Record the first ``batches`` batches' solves, compare each, summarise per side."""
    check_inputs(checkpoint, data_bin)
    import torch

    model, samples = load(checkpoint, data_bin, subset, max_tokens)
    sides = node_sides(model, checkpoint)
    side_of = {block: tag for tag, blocks in sides.items() for block in blocks}
    rows = {tag: [] for tag in sides}
    for i, sample in enumerate(samples):
        if i >= batches:
            break
        with recording(list(side_of)) as calls, torch.no_grad():
            model(**sample["net_input"])
        for call in calls:
            rows[side_of[call["block"]]].append(compare(call))
        print(f"{PROG}: batch {i + 1}/{batches}: " + "; ".join(
            f"{tag} torchdiffeq {r[-1]['nfe_torchdiffeq']} vs torchode {r[-1]['calls_torchode']} calls"
            for tag, r in rows.items() if r), file=sys.stderr, flush=True)
    summary = {tag: summarise(sides[tag], r) for tag, r in rows.items()}
    return {"checkpoint": checkpoint, "subset": subset, "max_tokens": max_tokens,
            "summary": summary, "rows": rows}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--data-bin", required=True)
    p.add_argument("--subset", default="valid")
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=4096, help="batch size, as in training")
    p.add_argument("--json", help="write the summary and per-batch rows here")
    a = p.parse_args(argv)
    try:
        result = probe(a.checkpoint, a.data_bin, a.subset, a.batches, a.max_tokens)
    except ProbeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["summary"], indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
