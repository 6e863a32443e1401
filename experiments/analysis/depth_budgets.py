#!/usr/bin/env python3
"""One checkpoint, any depth: a NODE model decoded at several evaluations per block against a
LayerDrop classic pruned at load time and classics trained at each depth (issue 38, item 3).

    depth_budgets.py --data-bin DIR [--node NAME=CKPT ...] [--layerdrop NAME=CKPT ...]
        [--classic NAME=CKPT ...] [--node-rungs own euler-1 midpoint-1 rk4-1 rk4-2]
        [--keep 1 2 4] [--json FILE] [--figure PNG]
    depth_budgets.py --render JSON [JSON ...] [--json MERGED] [--figure PNG]

Every point is one way of running one checkpoint, the same weights each time:

- a NODE model (--node) under each of --node-rungs: the solver ladder's rungs
  (experiments.analysis.solver_ladder), euler x1, midpoint x1, rk4 x1 and rk4 x2 spending 1, 2,
  4 and 8 evaluations of f per block, and its own solver;
- a classic trained with --encoder-layerdrop/--decoder-layerdrop (--layerdrop) pruned at load
  time to each --keep count of layers per side, as fairseq's
  ``--model-overrides "{'encoder_layers_to_keep': '0,2', 'decoder_layers_to_keep': '0,2'}"``
  does (the kept layers evenly spaced from the first, as Fan et al. prune: 0; 0,2; all);
- a classic at its own depth (--classic).

Its budget is the evaluations of a layer-sized f per position on each side (a classic layer
is one; a NODE block is its solver's evaluations). For each point: the valid loss over the
whole valid set (bits per target token), test2016 BLEU (beam 5, the pieces joined, sacreBLEU
against the raw reference: the project's evaluation) and sentences per second of that
translation (the machine alone, or the number means nothing). The figure: BLEU against
milliseconds per sentence, one line per model.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

from experiments import machine_load as ml
from experiments.analysis import solver_ladder as sl
from experiments.files import (command_line, machine_record, pyplot, repo_relative, save_figure, table,
                               utc_now, write_json)

PROG = "depth_budgets"
NODE_RUNGS = ("own", "euler-1", "midpoint-1", "rk4-1", "rk4-2")
KEEP = (1, 2, 4)
KINDS = ("node", "layerdrop", "classic")


class BudgetError(Exception):
    pass


def kept_layers(total: int, keep: int) -> Optional[str]:
    """fairseq's layers_to_keep for ``keep`` of ``total`` layers, evenly spaced from layer 0
    (None: all of them, no pruning)."""
    if not 1 <= keep <= total:
        raise BudgetError(f"cannot keep {keep} of {total} layers")
    if keep == total:
        return None
    return ",".join(str(i * total // keep) for i in range(keep))


def _pairs(items: List[str], flag: str) -> List[Tuple[str, str]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{PROG}: error: {flag} takes NAME=CKPT, got {item!r}")
        out.append((name, path))
    return out


class Evaluation:
    """The data of one evaluation: valid batches, test batches, reference, beam."""

    def __init__(self, a, refs: Optional[List[str]]):
        self.a, self.refs = a, refs
        self._ready = None  # (model, criterion, valid, test, generator) of the last model

    def _prepare(self, model, task, cfg):
        """Criterion, batches and generator, built once per loaded model: a NODE model's rungs
        change its solver in place, so they share them."""
        import argparse as ap
        if self._ready is None or self._ready[0] is not model:
            self._ready = (model, task.build_criterion(cfg.criterion),
                           sl.batches_of(task, self.a.valid_subset, self.a.max_tokens, model),
                           sl.batches_of(task, self.a.test_subset, None, model, batch_size=self.a.batch_size),
                           task.build_generator([model], ap.Namespace(beam=self.a.beam)))
        return self._ready[1:]

    def point(self, model, task, cfg, node: bool = False) -> dict:
        criterion, valid, test, generator = self._prepare(model, task, cfg)
        row = sl.valid_loss(model, task, criterion, valid)
        remove = None if self.a.remove_bpe == "none" else self.a.remove_bpe
        sl.translate(model, task, generator, test[:1], None, remove)  # untimed: the first batch's set-up
        hyps, seconds, per_position = sl.translate(model, task, generator, test, self.a.bleu_sentences, remove)
        row.update(sentences=len(hyps), sentences_per_s=round(len(hyps) / seconds, 2),
                   ms_per_sentence=round(1000 * seconds / len(hyps), 3),
                   bleu=sl.bleu_of(hyps, self.refs) if self.refs is not None else None)
        if node:  # a classic decoder spends one evaluation per layer and position, no solves
            row["nfe_dec_per_position"] = per_position
        return row


def layer_count(model, side: str) -> int:
    return len(getattr(model, side).layers)


def node_points(ev: Evaluation, name: str, ckpt: str) -> dict:
    model, cfg, task = sl.load(ckpt, ev.a.data_bin)
    on = sl.OnRung(model)
    if not on.layers:
        raise BudgetError(f"{ckpt}: no NODE block (pass a classic with --layerdrop or --classic)")
    blocks = {side: layer_count(model, side) for side in ("encoder", "decoder")}
    points = []
    for rung in ev.a.node_rungs:
        on.set(sl.RUNGS[rung])
        row = ev.point(model, task, cfg, node=True)
        # evaluations of f per position and side: per block and solve, times the blocks
        per_block = max(row.get("nfe_enc", 0), row.get("nfe_dec", 0))
        row.update(point=rung, budget=per_block * max(blocks.values()))
        points.append(row)
        _say(name, row)
    on.restore()
    return {"name": name, "kind": "node", "checkpoint": repo_relative(os.path.abspath(ckpt)),
            "own_solver": sl.describe_own(model), "layers": blocks, "points": points}


def layerdrop_points(ev: Evaluation, name: str, ckpt: str, keeps) -> dict:
    model, _, _ = sl.load(ckpt, ev.a.data_bin)
    total = {side: layer_count(model, side) for side in ("encoder", "decoder")}
    trained = {side: float(getattr(getattr(model, side), "encoder_layerdrop" if side == "encoder"
                                   else "decoder_layerdrop", 0.0) or 0.0) for side in total}
    del model
    if max(keeps) > max(total.values()):
        raise BudgetError(f"{ckpt}: cannot keep {max(keeps)} of {max(total.values())} layers")
    points = []
    for keep in keeps:
        overrides = {}
        for side in ("encoder", "decoder"):
            kept = kept_layers(total[side], min(keep, total[side]))
            if kept is not None:
                overrides[f"{side}_layers_to_keep"] = kept
        model, cfg, task = sl.load(ckpt, ev.a.data_bin, overrides)
        got = {side: layer_count(model, side) for side in total}
        if max(got.values()) != keep:
            raise BudgetError(f"{ckpt}: kept {got} layers for --keep {keep}")
        row = ev.point(model, task, cfg)
        row.update(point=f"keep-{keep}", budget=keep, layers_to_keep=overrides or None)
        points.append(row)
        _say(name, row)
    return {"name": name, "kind": "layerdrop", "checkpoint": repo_relative(os.path.abspath(ckpt)),
            "layers": total, "layerdrop": trained, "points": points}


def classic_points(ev: Evaluation, name: str, ckpt: str) -> dict:
    model, cfg, task = sl.load(ckpt, ev.a.data_bin)
    total = {side: layer_count(model, side) for side in ("encoder", "decoder")}
    row = ev.point(model, task, cfg)
    row.update(point=f"layers-{max(total.values())}", budget=max(total.values()))
    _say(name, row)
    return {"name": name, "kind": "classic", "checkpoint": repo_relative(os.path.abspath(ckpt)),
            "layers": total, "points": [row]}


def _say(name: str, row: dict) -> None:
    print(f"{PROG}: {name} {row['point']}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "point"),
          flush=True)


# -- output ------------------------------------------------------------------------------------

def render(models: List[dict]) -> List[str]:
    header = ["model", "kind", "point", "evaluations per position and side", "valid loss", "test2016 BLEU",
              "sentences/s"]
    rows = []
    for m in models:
        for p in m["points"]:
            rows.append([m["name"], m["kind"], p["point"], f"{p['budget']:g}", f"{p['valid_loss']:.3f}",
                         "-" if p.get("bleu") is None else f"{p['bleu']:.2f}", f"{p['sentences_per_s']:.1f}"])
    return table(header, rows)


def figure(models: List[dict], path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    classics = [m for m in models if m["kind"] == "classic"]
    for m in models:
        if m["kind"] == "classic":
            continue
        # the line follows depth (evaluations per position), each point where its time puts it
        pts = [(p["ms_per_sentence"], p["bleu"], p["point"]) for p in
               sorted(m["points"], key=lambda p: (p["budget"], p["ms_per_sentence"])) if p.get("bleu") is not None]
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if m["kind"] == "node" else "s--",
                        label=f"{m['name']} ({'solver' if m['kind'] == 'node' else 'layers kept'})")
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points",
                        color=line.get_color())
    if classics:
        pts = sorted((p["ms_per_sentence"], p["bleu"], m["name"]) for m in classics for p in m["points"]
                     if p.get("bleu") is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "k^:", label="classics trained at each depth")
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("decoding time, ms per sentence (beam 5, log scale)")
    ax.set_ylabel("test2016 BLEU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("one checkpoint at several depths: BLEU against decoding time", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--data-bin", metavar="DIR")
    p.add_argument("--node", nargs="+", default=[], metavar="NAME=CKPT", help="NODE checkpoints")
    p.add_argument("--layerdrop", nargs="+", default=[], metavar="NAME=CKPT",
                   help="classics trained with LayerDrop, pruned at load to each --keep")
    p.add_argument("--classic", nargs="+", default=[], metavar="NAME=CKPT", help="classics at their own depth")
    p.add_argument("--node-rungs", nargs="+", choices=list(sl.RUNGS), default=list(NODE_RUNGS), metavar="RUNG",
                   help=f"solver ladder rungs of the NODE points (default: {' '.join(NODE_RUNGS)})")
    p.add_argument("--keep", nargs="+", type=int, default=list(KEEP), metavar="K",
                   help="layers per side to keep of a --layerdrop classic (default 1 2 4)")
    p.add_argument("--bleu-sentences", type=int, metavar="N", help="translate only the first N batches' sentences")
    p.add_argument("--valid-subset", default="valid")
    p.add_argument("--test-subset", default="test")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--remove-bpe", default="sentencepiece")
    p.add_argument("--ref", metavar="FILE", help="raw reference of --test-subset (default: the data-bin's)")
    p.add_argument("--render", nargs="+", metavar="JSON", help="table (and --json, --figure) of earlier runs")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--figure", metavar="PNG")
    return p


def main(argv=None) -> int:
    a = arg_parser().parse_args(argv)
    if a.render:
        import json
        runs, models = [], []
        for path in a.render:
            with open(path, encoding="utf-8") as f:
                run = json.load(f)
            models += run["models"]
            runs.append({k: v for k, v in run.items() if k != "models"})
        print("\n".join(render(models)))
        if a.figure:
            figure(models, a.figure)
        if a.json:
            write_json(a.json, {"runs": runs, "models": models})
        return 0
    jobs = [(kind, name, path) for kind in KINDS for name, path in _pairs(getattr(a, kind), f"--{kind}")]
    if not jobs or not a.data_bin:
        raise SystemExit(f"{PROG}: error: give --data-bin and at least one --node, --layerdrop or --classic")
    if not os.path.isdir(a.data_bin):
        raise SystemExit(f"{PROG}: error: {a.data_bin}: data-bin directory not found")
    for _, name, path in jobs:
        if not os.path.isfile(path):
            raise SystemExit(f"{PROG}: error: {name}: {path}: checkpoint not found")
    from experiments.evaluation import find_reference, read_lines
    ref = a.ref or find_reference(a.data_bin, a.test_subset, None)
    if ref is None:
        print(f"{PROG}: no raw reference for {a.test_subset!r} (pass --ref): BLEU not computed", flush=True)
    ev = Evaluation(a, read_lines(ref) if ref else None)
    started = utc_now()
    models = []
    try:
        for kind, name, path in jobs:
            with ml.LoadMonitor() as monitor:  # sentences/s mean something only on a quiet machine
                if kind == "node":
                    models.append(node_points(ev, name, path))
                elif kind == "layerdrop":
                    models.append(layerdrop_points(ev, name, path, a.keep))
                else:
                    models.append(classic_points(ev, name, path))
            models[-1]["load"] = monitor.result
            if monitor.result.get("busy"):
                print(f"{PROG}: WARNING: {name} was timed on a busy machine ({ml.describe(monitor.result)}): "
                      f"its sentences/s are not to be trusted", file=sys.stderr, flush=True)
    except (BudgetError, sl.LadderError) as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    print("\n".join(render(models)))
    if a.figure:
        figure(models, a.figure)
    if a.json:
        write_json(a.json, {
            "command": command_line(sys.argv), "started": started,
            "finished": utc_now(),
            "machine": machine_record(),
            "reference": repo_relative(ref) if ref else None, "models": models})
    return 0


if __name__ == "__main__":
    sys.exit(main())
