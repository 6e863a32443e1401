#!/usr/bin/env python3
"""Time beam-search generation per configuration: sentences/s, ratio to the classic, NFE.

    time_generation.py                                   untrained mini models (configs/*.json
                                                         "mini" sizes), random sources, every
                                                         hypothesis forced to --tgt-len tokens
    time_generation.py --tiny --repeats 1                smoke test
    time_generation.py --device cuda --json FILE         (scripts/gpu-check.sh)
    time_generation.py --data-bin DIR --subset test \\
        --checkpoint classic-1layer=runs/a/checkpoint_best.pt \\
        --checkpoint project-best=runs/b/checkpoint_best.pt \\
        --checkpoint study-best=runs/c/checkpoint_best.pt [--remove-bpe sentencepiece]

Each NODE configuration is timed in its decoding modes: ``cached`` (the default: the newest
position solved alone, when exact or, for the separated decoder, always), ``recompute``
(every step re-solves the prefix: the reference) and, for a decoder with an adaptive
solver (full NODE or separated), ``fixed:METHOD:STEPS`` (--fixed-grid, an explicit opt-in:
decoding on a fixed grid, as ``--model-overrides "{'node_method': 'rk4', 'node_steps': 4}"``
does in fairseq-generate; the adaptive-only settings such as a first step are dropped).
After an untimed warm-up round (each run's first batch), runs are interleaved over --repeats
rounds and the fastest round is kept: on a shared
machine only ratios within one run mean anything. With --data-bin the hypotheses are also
scored (sacreBLEU against the references, mean length) and compared with the recompute
mode's (share of identical hypotheses).

NFE: ``nfe_dec_total`` counts each decoder solve once (it covers the whole batch);
``nfe_dec_per_sentence`` is the evaluations one sentence's translation went through
(each step's NFE, summed over the steps the sentence was still being decoded).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

from fairseq import checkpoint_utils, options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import node_transformer  # noqa: F401
from node_transformer.decoder import NODETransformerDecoder
from node_transformer.ode_block import ODEBlock

from experiments.configs import ROOT, USER_DIR

CLASSIC = "classic-1layer"
PROJECT_BEST = ["--node-dynamics", "prenorm", "--node-output-init", "xavier", "--node-method",
                "midpoint", "--node-steps", "1", "--node-backprop", "direct"]
# name -> (config number in configs/, extra flags); the first is the reference.
CONFIGS = {
    CLASSIC: ("02", []),
    "project-best": ("04", PROJECT_BEST),
    "study-best-07": ("07", []),
    "separated-rk4x2": ("07", ["--node-method", "rk4", "--node-steps", "2"]),
    "full-dopri5-04": ("04", []),
}
TINY = ["--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
        "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2"]


def config_flags(number: str, scale: str) -> List[str]:
    (path,) = glob.glob(os.path.join(ROOT, "configs", f"{number}-*.json"))
    with open(path) as f:
        cfg = json.load(f)
    return list(cfg["args"]) + list(cfg["scales"][scale])


def build_untrained(name: str, data_dir: str, tiny: bool):
    number, extra = CONFIGS[name]
    argv = [data_dir, "--user-dir", USER_DIR, "--source-lang", "src", "--target-lang", "tgt",
            *config_flags(number, "mini"), *(TINY if tiny else []), *extra]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return task, task.build_model(cfg.model)


def node_decoder(model) -> Optional[NODETransformerDecoder]:
    return model.decoder if isinstance(model.decoder, NODETransformerDecoder) else None


def modes_of(model, fixed_grid: str) -> List[str]:
    dec = node_decoder(model)
    if dec is None:
        return ["classic"]
    modes = ["cached", "recompute"] if dec.cached_decoding() else ["recompute"]
    if not dec.layers[0].block.staged():  # adaptive (or Adams): a fixed RK grid too
        modes.append(f"fixed:{fixed_grid}")
    return modes


def set_mode(model, mode: str, saved: Dict[ODEBlock, object]) -> None:
    """Decoding mode in-process; ``fixed:M:N`` puts every ODE block on that grid, as
    --model-overrides "{'node_method': M, 'node_steps': N}" does for fairseq-generate."""
    dec = node_decoder(model)
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    for b in blocks:
        b.solver = saved.setdefault(b, b.solver)
    if dec is None:
        return
    dec.decoding = "recompute" if mode == "recompute" else "auto"
    if mode.startswith("fixed:"):
        _, method, steps = mode.split(":")
        for b in blocks:
            b.solver = b.solver.fixed_step(int(steps), method)
        assert dec.cached_decoding(), f"{method} is not a fixed-grid Runge-Kutta method"


def random_batches(n: int, src_len: int, vocab: int, batch_size: int, device) -> List[dict]:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (n, src_len), generator=g)
    src[:, -1] = 2  # EOS, as fairseq's source sentences end
    out = []
    for i in range(0, n, batch_size):
        s = src[i:i + batch_size].to(device)
        out.append({"id": torch.arange(i, i + s.size(0)), "nsentences": s.size(0),
                    "net_input": {"src_tokens": s,
                                  "src_lengths": torch.full((s.size(0),), src_len, device=device)}})
    return out


def data_batches(task, subset: str, batch_size: int, max_positions, device) -> List[dict]:
    task.load_dataset(subset)
    itr = task.get_batch_iterator(dataset=task.dataset(subset), max_sentences=batch_size,
                                  max_positions=max_positions, seed=1).next_epoch_itr(shuffle=False)
    return [utils.move_to_cuda(b, device) if device.type == "cuda" else b for b in itr]


def generate_all(task, model, generator, batches, device) -> tuple:
    """(seconds, {id: hypothesis tokens}, nfe dict) of one pass over the batches."""
    blocks_enc = [m for m in (model.encoder.modules()) if isinstance(m, ODEBlock)]
    dec = node_decoder(model)
    if dec is not None:
        dec.generation_nfe.reset()
    enc_total = enc_rows = 0
    dec_total = dec_rows = dec_steps = 0  # summed over batches: the task resets its count per batch
    hyps = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for sample in batches:
        for b in blocks_enc:
            b.solves.clear()
        with torch.no_grad():
            out = task.inference_step(generator, [model], sample)
        for i, sid in enumerate(sample["id"].tolist()):
            hyps[sid] = out[i][0]["tokens"]
        if dec is not None:
            g = dec.generation_nfe
            dec_total, dec_rows, dec_steps = dec_total + g.total, dec_rows + g.rows, dec_steps + g.steps
        nfe = sum(s.nfe_forward for b in blocks_enc for s in b.solves)
        enc_total += nfe
        enc_rows += nfe * sample["net_input"]["src_tokens"].size(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    n = len(hyps)
    nfe = {}
    if blocks_enc:
        nfe.update(nfe_enc_total=enc_total, nfe_enc_per_sentence=round(enc_rows / n, 1))
    if dec is not None:
        nfe.update(nfe_dec_total=dec_total,
                   nfe_dec_per_sentence=round(dec_rows / generator.beam_size / n, 1) if n else 0.0,
                   nfe_dec_per_step=round(dec_total / max(dec_steps, 1), 2))
    return seconds, hyps, nfe


def score(task, hyps: Dict[int, torch.Tensor], subset: str, remove_bpe: Optional[str]) -> dict:
    import sacrebleu

    d = task.target_dictionary
    ds = task.dataset(subset)
    ids = sorted(hyps)
    sys_out = [d.string(hyps[i].cpu(), remove_bpe) for i in ids]
    refs = [d.string(ds.tgt[i], remove_bpe) for i in ids]
    return {"bleu": round(sacrebleu.corpus_bleu(sys_out, [refs]).score, 2),
            "mean_len": round(sum(len(h) - 1 for h in hyps.values()) / len(hyps), 2)}


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS),
                   help="untrained configurations to time (default: all)")
    p.add_argument("--sentences", type=int, default=24, help="untrained: number of sources")
    p.add_argument("--src-len", type=int, default=20, help="untrained: source length")
    p.add_argument("--tgt-len", type=int, default=30, help="untrained: every hypothesis has this length")
    p.add_argument("--vocab", type=int, default=8000, help="untrained: dictionary size")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sentences per batch (default: all in one batch untrained, 128 with --data-bin)")
    p.add_argument("--tiny", action="store_true", help="untrained: tiny dimensions (smoke test)")
    p.add_argument("--data-bin", help="time trained checkpoints on this fairseq data-bin instead")
    p.add_argument("--subset", default="test")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="with --data-bin: a checkpoint to time (repeat; the first is the reference)")
    p.add_argument("--remove-bpe", default=None, help="with --data-bin: as fairseq-generate's")
    p.add_argument("--max-len-a", type=float, default=1.2, help="with --data-bin (default 1.2)")
    p.add_argument("--max-len-b", type=int, default=10, help="with --data-bin (default 10)")
    p.add_argument("--fixed-grid", default="rk4:4", metavar="METHOD:STEPS",
                   help="fixed grid offered to decoders with an adaptive solver (default rk4:4)")
    p.add_argument("--skip-recompute", action="store_true",
                   help="do not time the recompute mode where a faster one exists (it is slow)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the fastest is kept (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--json", help="also write the rows to this file")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked; ``named_checkpoints``: the --checkpoint NAME=PATH pairs."""
    p = arg_parser()
    a = p.parse_args(argv)
    if a.checkpoint and not a.data_bin:
        p.error("--checkpoint needs --data-bin")
    if a.data_bin and not a.checkpoint:
        p.error("--data-bin needs at least one --checkpoint NAME=PATH")
    a.named_checkpoints = []
    for item in a.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"--checkpoint must be NAME=PATH, got {item!r}")
        a.named_checkpoints.append((name, path))
    return a


def trained_entries(a) -> tuple:
    """(name, task, model) of each checkpoint, the batch size and the generation options."""
    entries = []
    for name, path in a.named_checkpoints:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [path], arg_overrides={"data": a.data_bin})
        entries.append((name, task, models[0]))
    return entries, a.batch_size or 128, dict(max_len_a=a.max_len_a, max_len_b=a.max_len_b)


def untrained_entries(a, dict_dir: str) -> tuple:
    """The same for untrained models of --configs over a dictionary of --vocab made-up words;
    every hypothesis is forced to --tgt-len tokens."""
    for lang in ("src", "tgt"):
        with open(os.path.join(dict_dir, f"dict.{lang}.txt"), "w") as f:
            f.writelines(f"t{i} 1\n" for i in range(a.vocab - 4))
    entries = [(name, *build_untrained(name, dict_dir, a.tiny)) for name in a.configs]
    return entries, a.batch_size or a.sentences, dict(max_len_a=0, max_len_b=a.tgt_len, min_len=a.tgt_len)


def plan_runs(a, entries, batch_size: int, gen_opts: dict, device) -> list:
    """(name, mode, task, model, generator, batches) for every decoding mode to time."""
    runs = []
    for name, task, model in entries:
        model.to(device).eval()
        if a.data_bin:
            batches = data_batches(task, a.subset, batch_size, utils.resolve_max_positions(
                task.max_positions(), model.max_positions()), device)
        else:
            batches = random_batches(a.sentences, a.src_len, len(task.source_dictionary),
                                     batch_size, device)
        gen_args = argparse.Namespace(beam=a.beam, **gen_opts)
        generator = task.build_generator([model], gen_args)
        modes = modes_of(model, a.fixed_grid)
        if a.skip_recompute and len(modes) > 1:
            modes = [m for m in modes if m != "recompute"]
        for mode in modes:
            runs.append((name, mode, task, model, generator, batches))
    return runs


def fastest_rounds(runs, repeats: int, device) -> Dict[tuple, dict]:
    """Time the runs interleaved over ``repeats`` rounds; keep each one's fastest round."""
    best: Dict[tuple, dict] = {}
    saved: Dict[ODEBlock, object] = {}
    # Untimed warm-up round (each run's first batch): allocator, kernels and caches are warm
    # before the first timed round, so that --repeats 1 does not time a cold start.
    for name, mode, task, model, generator, batches in runs:
        set_mode(model, mode, saved)
        generate_all(task, model, generator, batches[:1], device)
    for r in range(repeats):
        for name, mode, task, model, generator, batches in runs:
            set_mode(model, mode, saved)
            seconds, hyps, nfe = generate_all(task, model, generator, batches, device)
            key = (name, mode)
            if key not in best or seconds < best[key]["seconds"]:
                best[key] = {"seconds": seconds, "hyps": hyps, "nfe": nfe}
    for name, mode, task, model, *_ in runs:
        set_mode(model, "cached", saved)  # back to the models' own solvers
    return best


def result_rows(a, runs, best: Dict[tuple, dict]) -> List[dict]:
    """One row per run, printed as it is made: speed, ratio to the first run, NFE, and the
    agreement with the recomputation (and BLEU with --data-bin)."""
    ref_name = runs[0][0]
    ref_time = best[(ref_name, runs[0][1])]["seconds"]
    rows = []
    for name, mode, task, model, generator, batches in runs:
        b = best[(name, mode)]
        n = len(b["hyps"])
        dec = node_decoder(model)
        solver = None
        if dec is not None:
            block = dec.layers[0].block
            s = getattr(block, "solver", None)  # None: a learned RK block (rk_blocks.py)
            solver = block.describe() if s is None else f"{s.method}" + (f" x{s.steps}" if s.steps else "")
            if mode.startswith("fixed:"):
                solver = mode[6:].replace(":", " x")
        row = {"config": name, "mode": mode, "solver": solver, "sentences": n,
               "seconds": round(b["seconds"], 3), "sentences_per_second": round(n / b["seconds"], 2),
               "time_ratio_to_" + ref_name: round(b["seconds"] / ref_time, 2), **b["nfe"]}
        if dec is not None and mode != "recompute" and (name, "recompute") in best:
            other = best[(name, "recompute")]["hyps"]
            row["same_hyps_as_recompute"] = round(
                sum(torch.equal(b["hyps"][i], other[i]) for i in b["hyps"]) / n, 3)
        if a.data_bin:
            row.update(score(task, b["hyps"], a.subset, a.remove_bpe))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def machine(a, device, argv) -> dict:
    """Where and how the timings were taken."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv[1:] if argv is None else argv,
            "beam": a.beam, "untrained": not a.data_bin}


def main(argv=None):
    a = parse_args(argv)
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as dict_dir:
        entries, batch_size, gen_opts = (trained_entries(a) if a.data_bin
                                         else untrained_entries(a, dict_dir))
        runs = plan_runs(a, entries, batch_size, gen_opts, device)
        rows = result_rows(a, runs, fastest_rounds(runs, a.repeats, device))
    meta = machine(a, device, argv)
    print(json.dumps(meta))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return rows

if __name__ == "__main__":
    main()
