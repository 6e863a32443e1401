#!/usr/bin/env python3
"""The solver ladder: is a trained checkpoint an ODE, or a discrete network written as one?

    solver_ladder.py CKPT [CKPT ...] --data-bin DIR [--names A B ...] [--rungs own euler-1 ...]
        [--bleu-rungs own rk4-1 ...] [--bleu-sentences N] [--threshold 0.05] [--agree 0.01]
        [--hyp-dir DIR] [--json FILE] [--figure PNG]
    solver_ladder.py --render JSON [JSON ...] [--names A B ...] [--json MERGED] [--figure PNG]
        (the table and figure of earlier runs, or of the checkpoints --names picks, several
        runs merged into one file)

Each checkpoint is evaluated under its own solver and under a ladder of others, the same
weights every time: euler at 1, 2, 4, 8 and 16 steps, midpoint and rk4 at 1, 2, 4 and 8,
dopri5 at tolerances 1e-1 to 1e-4. For each rung: the valid loss over the whole valid set
(fairseq's: the criterion's loss per target token, in bits), the forward evaluations per
block and solve on each side, and, for the --bleu-rungs, test2016 BLEU (the project's
evaluation, experiments/evaluation.py: beam 5, the sentencepiece pieces joined, sacreBLEU
against the raw reference) with sentences per second and the decoder's evaluations per
generated position.

The verdict: the converged loss is the two finest rungs' (rk4 x 8, dopri5 1e-4), which must
agree within --agree first ("not converged" otherwise); the gap is |own - converged|; "an ODE"
when the gap is at most --threshold, "a discrete network" above it. A model that is an ODE
has one function whatever its solver, so its depth (the evaluations spent) can be chosen
after training; a discrete network fits its own solver's error and loses when solved
accurately (Ott et al., ICLR 2021).

Learned RK blocks (--node-block rk2-gated, pc) are not solves: their own rung is the learned
step, and the ladder solves the same f over the same span (dh/dt = f(h) is well defined for
any f), which says how far the learned step is from the flow of its f.

Rungs are run in-process: each block's solver is replaced, as fairseq-validate's
``--model-overrides "{'node_method': 'rk4', 'node_steps': 8}"`` would (tests hold the two to
each other).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

from experiments.files import (command_line, machine_record, pyplot, repo_relative, save_figure, table,
                               utc_now, write_json)

PROG = "solver_ladder"
OWN = "own"


@dataclass(frozen=True)
class Rung:
    name: str
    method: str
    steps: Optional[int] = None
    tol: Optional[float] = None

    def settings(self, base):
        """odeint_ext.SolverSettings of this rung over ``base``'s times, unbounded but for a
        guard against a solve that would never end."""
        adaptive = self.tol is not None
        return replace(base.fixed_step(self.steps, self.method) if not adaptive else
                       replace(base, method=self.method, steps=None, first_step=None, min_step=None,
                               seminorm=False, max_num_steps=None),
                       rtol=self.tol or base.rtol, atol=self.tol or base.atol, max_nfe=MAX_NFE,
                       backprop="direct")


MARKERS = {"euler": "o", "midpoint": "s", "rk4": "^", "dopri5": "x"}  # the figure's
MAX_NFE = 20000  # per solve: a rung this costly is recorded as failed, not waited for
RUNGS: Dict[str, Rung] = {OWN: Rung(OWN, "")}
for _m, _counts in (("euler", (1, 2, 4, 8, 16)), ("midpoint", (1, 2, 4, 8)), ("rk4", (1, 2, 4, 8))):
    for _n in _counts:
        RUNGS[f"{_m}-{_n}"] = Rung(f"{_m}-{_n}", _m, steps=_n)
for _tol in (1e-1, 1e-2, 1e-3, 1e-4):
    RUNGS[f"dopri5-{_tol:g}"] = Rung(f"dopri5-{_tol:g}", "dopri5", tol=_tol)
FINEST = ("rk4-8", "dopri5-0.0001")
DEFAULT_BLEU_RUNGS = (OWN, "euler-1", "midpoint-1", "rk4-1", "rk4-2", "rk4-4", "rk4-8")


class LadderError(Exception):
    pass


# -- putting a model on a rung -------------------------------------------------------------------

def _layers(model):
    """The NODE layers (their ``block`` is an ODE block or a learned RK block)."""
    from node_transformer.layers import _NODELayer
    return [m for m in model.modules() if isinstance(m, _NODELayer)]


class OnRung:
    """Puts every block of ``model`` on a rung and back: an ODE block gets the rung's solver;
    a learned RK block is replaced by an ODE block over its own dynamics and span."""

    def __init__(self, model):
        from node_transformer.ode_block import ODEBlock
        self.model, self.layers = model, _layers(model)
        self.own = {layer: layer.block for layer in self.layers}
        self.own_solver = {layer: layer.block.solver for layer in self.layers
                           if isinstance(layer.block, ODEBlock)}
        self.learned = any(not isinstance(b, ODEBlock) for b in self.own.values())

    def set(self, rung: Rung) -> None:
        from node_transformer.ode_block import ODEBlock
        from odeint_ext import SolverSettings
        for layer in self.layers:
            own = self.own[layer]
            layer.block = own
            if isinstance(own, ODEBlock):
                own.solver = self.own_solver[layer]
                if rung.name != OWN:
                    own.solver = rung.settings(self.own_solver[layer])
            elif rung.name != OWN:  # a learned RK block: its f over its span
                base = SolverSettings(ts=(own.t0, own.t0 + own.h), backprop="direct")
                layer.block = ODEBlock(own.dynamics, rung.settings(base)).to(_device_of(own))

    def restore(self) -> None:
        self.set(RUNGS[OWN])


def _device_of(module):
    return next(module.parameters()).device


def describe_own(model) -> str:
    blocks = [layer.block for layer in _layers(model)]
    return blocks[0].describe() if blocks else "no NODE block"


# -- measuring one rung -----------------------------------------------------------------------

def side_nfe(model) -> Dict[str, float]:
    """Forward evaluations per block and solve since the last reset, per side."""
    from node_transformer.ode_block import depth_blocks
    out = {}
    for side, tag in (("encoder", "enc"), ("decoder", "dec")):
        solves = [s.nfe_forward for b in depth_blocks(getattr(model, side, None)) for s in b.solves]
        if solves:
            out[f"nfe_{tag}"] = round(sum(solves) / len(solves), 2)
    return out


def valid_loss(model, task, criterion, batches) -> dict:
    """The criterion's loss over the batches, per target token in bits (fairseq's valid_loss),
    its negative log-likelihood without label smoothing (valid_nll: smoothing weighs the
    whole vocabulary's tail, which a solver change may move apart from the words a search
    picks), and the evaluations per block and solve."""
    import torch
    from node_transformer.ode_block import depth_blocks
    for b in depth_blocks(model):
        b.solves = type(b.solves)(maxlen=None)
    total = size = nll = tokens = 0.0
    has_nll = True  # a criterion without label smoothing logs no nll_loss: no valid_nll
    with torch.no_grad():
        for sample in batches:
            loss, sample_size, log = criterion(model, sample)
            total, size = total + float(loss), size + float(sample_size)
            has_nll = has_nll and "nll_loss" in log
            if has_nll:
                nll, tokens = nll + float(log["nll_loss"]), tokens + float(log["ntokens"])
    out = {"valid_loss": round(total / size / math.log(2), 4)}
    if has_nll and tokens:
        out["valid_nll"] = round(nll / tokens / math.log(2), 4)
    out.update(side_nfe(model))
    for b in depth_blocks(model):
        b.solves = type(b.solves)(maxlen=64)
    return out


def translate(model, task, generator, batches, sentences: Optional[int], remove_bpe: Optional[str]) -> tuple:
    """({id: detokenised hypothesis}, seconds, decoder evaluations per generated position)."""
    import torch
    dec = getattr(model.decoder, "generation_nfe", None)
    hyps, total, steps = {}, 0, 0
    d = task.target_dictionary
    strip = generator.symbols_to_strip_from_output
    start = time.perf_counter()
    for sample in batches:
        if sentences is not None and len(hyps) >= sentences:
            break
        if dec is not None:
            dec.reset()
        with torch.no_grad():
            out = task.inference_step(generator, [model], sample)
        for i, sid in enumerate(sample["id"].tolist()):
            hyps[sid] = d.string(out[i][0]["tokens"].int().cpu(), remove_bpe,
                                 extra_symbols_to_ignore=strip)
        if dec is not None:
            total, steps = total + dec.total, steps + dec.steps
    seconds = time.perf_counter() - start
    return hyps, seconds, (round(total / steps, 2) if dec is not None and steps else None)


def bleu_of(hyps: Dict[int, str], refs: List[str]) -> float:
    from sacrebleu.metrics import BLEU
    ids = sorted(hyps)
    return round(BLEU().corpus_score([hyps[i] for i in ids], [[refs[i] for i in ids]]).score, 2)


# -- one checkpoint ---------------------------------------------------------------------------

def load(checkpoint: str, data_bin: str, overrides: Optional[dict] = None):
    """The model on the CPU in eval mode, its config and task; ``overrides`` as fairseq's
    --model-overrides (a LayerDrop model pruned at load: ``encoder_layers_to_keep``)."""
    import torch
    import node_transformer  # noqa: F401  (registers model and task)
    from fairseq import checkpoint_utils
    if not os.path.isfile(checkpoint):
        raise LadderError(f"{checkpoint}: checkpoint not found")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": os.path.abspath(data_bin), **(overrides or {})})
    model = models[0].to(torch.device("cpu")).eval()
    return model, cfg, task


def batches_of(task, subset: str, max_tokens: int, model, batch_size=None) -> list:
    from fairseq import utils
    try:
        task.load_dataset(subset)
    except (FileNotFoundError, SystemExit) as e:
        raise LadderError(f"no subset {subset!r} in the data-bin: {e}") from None
    itr = task.get_batch_iterator(
        dataset=task.dataset(subset), max_tokens=max_tokens if batch_size is None else None,
        max_sentences=batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=False, seed=1).next_epoch_itr(shuffle=False)
    return list(itr)


def verdict(rungs: Dict[str, dict], threshold: float, agree: float) -> dict:
    own = rungs.get(OWN, {}).get("valid_loss")
    fine = [rungs.get(r, {}).get("valid_loss") for r in FINEST]
    if own is None or any(v is None for v in fine):
        return {"verdict": "not measured", "gap": None, "converged_loss": None,
                "note": f"needs the rungs {OWN}, {', '.join(FINEST)}"}
    if abs(fine[0] - fine[1]) > agree:
        return {"verdict": "not converged", "gap": None, "converged_loss": None,
                "note": f"{FINEST[0]} and {FINEST[1]} differ by {abs(fine[0] - fine[1]):.4f} > {agree}"}
    converged = (fine[0] + fine[1]) / 2
    gap = own - converged
    return {"verdict": "an ODE" if abs(gap) <= threshold else "a discrete network",
            "gap": round(gap, 4), "converged_loss": round(converged, 4)}


def ladder(a, checkpoint: str, name: str, refs: Optional[List[str]]) -> dict:
    model, cfg, task = load(checkpoint, a.data_bin)
    criterion = task.build_criterion(cfg.criterion)
    on = OnRung(model)
    if not on.layers:
        raise LadderError(f"{checkpoint}: no NODE block: the ladder applies to NODE models")
    valid = batches_of(task, a.valid_subset, a.max_tokens, model)
    test = batches_of(task, a.test_subset, None, model, batch_size=a.batch_size) if a.bleu_rungs else []
    generator = task.build_generator([model], argparse.Namespace(beam=a.beam)) if test else None
    own = describe_own(model)
    print(f"{PROG}: {name}: {checkpoint} (own solver: {own}{', learned RK blocks' if on.learned else ''})",
          flush=True)
    rows = {}
    for rung_name in a.rungs:
        rung = RUNGS[rung_name]
        on.set(rung)
        row = {"rung": rung_name, "method": rung.method or own, "steps": rung.steps, "tol": rung.tol}
        try:
            row.update(valid_loss(model, task, criterion, valid))
            if rung_name in a.bleu_rungs:
                hyps, seconds, per_position = translate(model, task, generator, test, a.bleu_sentences,
                                                        None if a.remove_bpe == "none" else a.remove_bpe)
                row.update(sentences=len(hyps), sentences_per_s=round(len(hyps) / seconds, 2),
                           nfe_dec_per_position=per_position)
                row["bleu"] = bleu_of(hyps, refs) if refs is not None else None
                if a.hyp_dir:
                    os.makedirs(a.hyp_dir, exist_ok=True)
                    with open(os.path.join(a.hyp_dir, f"{name}.{rung_name}.hyp"), "w", encoding="utf-8") as f:
                        f.writelines(hyps[i] + "\n" for i in sorted(hyps))
        except Exception as e:  # noqa: BLE001  (a solve over MAX_NFE, a non-finite state)
            from odeint_ext import ODESolveError
            if not isinstance(e, ODESolveError):
                raise
            row["failed"] = str(e).splitlines()[0]
        rows[rung_name] = row
        print(f"{PROG}: {name} {rung_name}: " + ", ".join(f"{k} {v}" for k, v in row.items()
                                                         if k not in ("rung", "method", "steps", "tol")),
              flush=True)
    on.restore()
    out = {"name": name, "checkpoint": repo_relative(os.path.abspath(checkpoint)), "own_solver": own,
           "learned_blocks": on.learned, "rungs": list(rows.values())}
    out.update(verdict(rows, a.threshold, a.agree))
    return out


# -- output ----------------------------------------------------------------------------------

def render(results: List[dict], columns: Optional[List[str]] = None) -> List[str]:
    """The table: each rung's valid loss (evaluations per block enc/dec, BLEU); ``columns``:
    only these rungs."""
    names = list(columns) if columns else [r["rung"] for r in results[0]["rungs"]] if results else []
    header = ["checkpoint", *names, "verdict (gap)"]
    lines = []
    for res in results:
        by = {r["rung"]: r for r in res["rungs"]}
        cells = []
        for n in names:
            r = by.get(n, {})
            if "valid_loss" not in r:
                cells.append("failed" if "failed" in r else "-")
                continue
            nfe = "/".join(str(r[k]) for k in ("nfe_enc", "nfe_dec") if k in r)
            bleu = f", {r['bleu']}" if r.get("bleu") is not None else ""
            cells.append(f"{r['valid_loss']:.3f} ({nfe}{bleu})")
        gap = f" ({res['gap']:+.3f})" if res.get("gap") is not None else ""
        lines.append([res["name"], *cells, res["verdict"] + gap])
    return table(header, lines)


def figure(results: List[dict], path: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for res in results:
        pts = [(max(r.get("nfe_enc", 0), r.get("nfe_dec", 0)), r) for r in res["rungs"]
               if "valid_loss" in r and r["rung"] != OWN]
        pts.sort(key=lambda p: p[0])
        # a line through one family (euler, midpoint, rk4, dopri5: the same markers), points
        rk4 = [p for p in pts if p[1]["method"] == "rk4"]
        line, = axes[0].plot([p[0] for p in rk4], [p[1]["valid_loss"] for p in rk4], "-",
                             label=f"{res['name']} ({res['verdict']})")
        for method, marker in MARKERS.items():
            fam = [p for p in pts if p[1]["method"] == method]
            axes[0].plot([p[0] for p in fam], [p[1]["valid_loss"] for p in fam], marker, ms=4,
                         color=line.get_color(), linestyle="none")
        own = next((r for r in res["rungs"] if r["rung"] == OWN and "valid_loss" in r), None)
        if own:
            axes[0].plot([max(own.get("nfe_enc", 0), own.get("nfe_dec", 0))], [own["valid_loss"]], "*",
                         ms=12, color=line.get_color())
        for method, marker in MARKERS.items():
            bl = [(x, r["bleu"]) for x, r in pts if r.get("bleu") is not None and r["method"] == method]
            axes[1].plot([x for x, _ in bl], [b for _, b in bl], marker, ms=5, color=line.get_color(),
                         linestyle="-" if method == "rk4" else "none")
        if own and own.get("bleu") is not None:
            axes[1].plot([max(own.get("nfe_enc", 0), own.get("nfe_dec", 0))], [own["bleu"]], "*",
                         ms=12, color=line.get_color())
    for ax, label in zip(axes, ("valid loss (bits)", "test2016 BLEU")):
        ax.set_xscale("log")
        ax.set_xlabel("forward evaluations per block and solve (larger side)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("solver ladder: the same weights under each solver (star: its own; "
                 "o euler, s midpoint, ^ rk4 (line), x dopri5)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("checkpoints", nargs="*", metavar="CKPT")
    p.add_argument("--data-bin", metavar="DIR")
    p.add_argument("--render", nargs="+", metavar="JSON", help="print (and with --json merge) earlier runs")
    p.add_argument("--columns", nargs="+", choices=list(RUNGS), metavar="RUNG",
                   help="the rungs the table shows (default: every rung measured)")
    p.add_argument("--names", nargs="+", metavar="NAME", help="one per checkpoint (default: its run folder); with --render: "
                        "the checkpoints the table and figure show (--json keeps all)")
    p.add_argument("--rungs", nargs="+", choices=list(RUNGS), default=list(RUNGS), metavar="RUNG",
                   help=f"rungs to evaluate (default all: {', '.join(RUNGS)})")
    p.add_argument("--bleu-rungs", nargs="*", choices=list(RUNGS), default=list(DEFAULT_BLEU_RUNGS),
                   metavar="RUNG", help=f"rungs that also translate the test set (default: "
                                        f"{' '.join(DEFAULT_BLEU_RUNGS)}; none: no BLEU)")
    p.add_argument("--bleu-sentences", type=int, metavar="N", help="translate only the first N batches' sentences")
    p.add_argument("--valid-subset", default="valid")
    p.add_argument("--test-subset", default="test")
    p.add_argument("--max-tokens", type=int, default=4096, help="valid batches (default 4096)")
    p.add_argument("--batch-size", type=int, default=64, help="test sentences per batch (default 64)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threshold", type=float, default=0.05,
                   help="largest |own - converged| valid-loss gap (bits) of an ODE (default 0.05)")
    p.add_argument("--agree", type=float, default=0.01,
                   help="largest gap between the two finest rungs for a converged loss (default 0.01)")
    p.add_argument("--remove-bpe", default="sentencepiece",
                   help="fairseq's --remove-bpe mode; 'none' for word-level data (default sentencepiece)")
    p.add_argument("--ref", metavar="FILE", help="raw reference of --test-subset (default: the data-bin's)")
    p.add_argument("--hyp-dir", metavar="DIR", help="write each BLEU rung's hypotheses to DIR/NAME.RUNG.hyp")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--figure", metavar="PNG")
    return p


def render_files(a) -> int:
    """--render: the runs' checkpoints in one table, figure and (--json) file; each run's
    command, times and machine kept beside its checkpoints."""
    import json
    runs, results = [], []
    for path in a.render:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
        results += run["checkpoints"]
        runs.append({k: v for k, v in run.items() if k != "checkpoints"})
    shown = results
    if a.names:  # a figure of a few checkpoints out of many: those, in this order
        by_name = {r["name"]: r for r in results}
        missing = [n for n in a.names if n not in by_name]
        if missing:
            raise SystemExit(f"{PROG}: error: --names {' '.join(missing)}: not in {' '.join(a.render)} "
                             f"(they hold {', '.join(by_name)})")
        shown = [by_name[n] for n in a.names]
    print("\n".join(render(shown, a.columns)))
    if a.figure:
        figure(shown, a.figure)
    if a.json:
        write_json(a.json, {"runs": runs, "threshold": runs[0]["threshold"], "agree": runs[0]["agree"],
                            "finest": list(FINEST), "checkpoints": results})
    return 0


def main(argv=None) -> int:
    a = arg_parser().parse_args(argv)
    if a.render:
        return render_files(a)
    if not a.checkpoints or not a.data_bin:
        raise SystemExit(f"{PROG}: error: give checkpoints and --data-bin (or --render JSON)")
    if a.names and len(a.names) != len(a.checkpoints):
        raise SystemExit(f"{PROG}: error: {len(a.names)} --names for {len(a.checkpoints)} checkpoints")
    if not os.path.isdir(a.data_bin):
        raise SystemExit(f"{PROG}: error: {a.data_bin}: data-bin directory not found")
    a.bleu_rungs = [r for r in a.bleu_rungs if r in a.rungs]
    from experiments.evaluation import find_reference, read_lines
    ref = a.ref or find_reference(a.data_bin, a.test_subset, None)
    refs = read_lines(ref) if ref else None
    if a.bleu_rungs and refs is None:
        print(f"{PROG}: no raw reference for {a.test_subset!r} (pass --ref): BLEU not computed", flush=True)
    names = a.names or [os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(c)))) or c
                        for c in a.checkpoints]
    started = utc_now()
    results = []
    try:
        for ckpt, name in zip(a.checkpoints, names):
            results.append(ladder(a, ckpt, name, refs))
    except LadderError as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    print("\n".join(render(results, a.columns)))
    if a.figure:
        figure(results, a.figure)
    if a.json:
        write_json(a.json, {
            "command": command_line(sys.argv), "started": started,
            "finished": utc_now(),
            "machine": machine_record(),
            "threshold": a.threshold, "agree": a.agree, "finest": list(FINEST),
            "reference": repo_relative(ref) if ref else None, "checkpoints": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
