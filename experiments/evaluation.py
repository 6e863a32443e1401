"""Translate a test set with a run's best checkpoint and score it with sacrebleu.

    evaluate.py RUN_DIR --data-bin DIR [--subset test] [--ref FILE] [--beam 5]

Runs `python -m fairseq_cli.generate` of this interpreter (--task node_translation, this
repository's --user-dir, --path RUN_DIR/checkpoints/checkpoint_best.pt, --beam 5,
--batch-size 64, --required-batch-size-multiple 1, --remove-bpe sentencepiece), keeps its
output in RUN_DIR/generate-SUBSET.txt, puts the detokenized hypotheses back in input order
in RUN_DIR/hyp_SUBSET.txt, and scores them with sacrebleu's Python API (default 13a
tokenization) against the raw reference: --ref FILE, or the one prepare_multi30k.py kept in
the data-bin (subsets.json -> raw/test2016.de for subset test). Writes
RUN_DIR/bleu_SUBSET.json (score, signature, settings) and prints the score.

With no reference available the hypotheses are still written and the BLEU is null.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

from .configs import ROOT, USER_DIR
from .files import command_line, repo_relative, write_json
from .progress import bar
PROG = "evaluate"


class EvalError(Exception):
    pass


def find_reference(data_bin: str, subset: str, target_lang: Optional[str]) -> Optional[str]:
    path = os.path.join(data_bin, "subsets.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    base = meta.get("subsets", {}).get(subset)
    lang = target_lang or meta.get("target_lang")
    if not base or not lang:
        return None
    ref = os.path.join(data_bin, meta.get("raw_dir", "raw"), f"{base}.{lang}")
    return ref if os.path.isfile(ref) else None


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def parse_generate(text: str) -> Dict[int, str]:
    """fairseq-generate output -> {sentence id: detokenized hypothesis (the D- line)}."""
    hyps = {}
    for line in text.split("\n"):
        m = re.match(r"D-(\d+)\t[^\t]*\t?(.*)$", line)
        if m:
            hyps[int(m.group(1))] = m.group(2)
    return hyps


def count_sentences(text: str) -> int:
    return sum(1 for line in text.split("\n") if re.match(r"S-\d+\t", line))


def generate(cmd: List[str], env: dict, total: Optional[int]) -> tuple:
    """Run fairseq-generate, counting its translated sentences on a progress bar (stderr);
    returns (returncode, stdout, stderr)."""
    import tempfile

    lines = []
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err, \
            bar(total=total, desc="translate", unit="sent") as progress:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                stdin=subprocess.DEVNULL, env=env, errors="replace")
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("S-"):
                progress.update(1)
        returncode = proc.wait()
        err.seek(0)
        stderr = err.read()
    return returncode, "".join(lines), stderr


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("run_dir")
    p.add_argument("--data-bin", required=True, metavar="DIR")
    p.add_argument("--subset", default="test", help="fairseq subset (default test = test2016)")
    p.add_argument("--ref", metavar="FILE", help="raw reference (default: from the data-bin)")
    p.add_argument("--checkpoint", default=None,
                   help="default RUN_DIR/checkpoints/checkpoint_best.pt")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--remove-bpe", default="sentencepiece",
                   help="fairseq --remove-bpe mode; 'none' for word-level data (default sentencepiece)")
    p.add_argument("--max-len-a", type=float, default=None)
    p.add_argument("--max-len-b", type=int, default=None)
    p.add_argument("--source-lang")
    p.add_argument("--target-lang")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="everything after --extra goes to fairseq-generate, last")
    return p


def generate_command(a, ckpt: str) -> List[str]:
    cmd = [sys.executable, "-m", "fairseq_cli.generate", os.path.abspath(a.data_bin),
           "--user-dir", USER_DIR, "--task", "node_translation",
           "--path", os.path.abspath(ckpt), "--gen-subset", a.subset,
           "--beam", str(a.beam), "--batch-size", str(a.batch_size),
           "--required-batch-size-multiple", "1"]
    if a.remove_bpe and a.remove_bpe != "none":
        cmd += ["--remove-bpe", a.remove_bpe]
    if a.max_len_a is not None:
        cmd += ["--max-len-a", str(a.max_len_a)]
    if a.max_len_b is not None:
        cmd += ["--max-len-b", str(a.max_len_b)]
    if a.source_lang:
        cmd += ["--source-lang", a.source_lang]
    if a.target_lang:
        cmd += ["--target-lang", a.target_lang]
    return cmd + a.extra


def translate(cmd: List[str], gen_path: str, total: Optional[int]) -> str:
    """Step 1: fairseq-generate; its output is kept in gen_path. Returns it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    returncode, stdout, stderr = generate(cmd, env, total)
    with open(gen_path, "w", encoding="utf-8") as f:
        f.write(stdout)
    if returncode != 0:
        tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["?"]
        raise EvalError(f"fairseq-generate failed (exit {returncode}): {tail[0]}")
    return stdout


def reorder(stdout: str, gen_path: str, hyp_path: str) -> List[str]:
    """Step 2: the detokenized hypotheses back in input order (fairseq prints them by batch)."""
    hyps = parse_generate(stdout)
    n = count_sentences(stdout)
    if sorted(hyps) != list(range(len(hyps))) or len(hyps) != n:
        raise EvalError(f"{gen_path}: {len(hyps)} hypotheses for {n} source sentences, "
                        "ids not 0..n-1")
    ordered = [hyps[i] for i in range(len(hyps))]
    with open(hyp_path, "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in ordered)
    return ordered


def score(ordered: List[str], ref: Optional[str], subset: str) -> tuple:
    """Step 3: sacreBLEU (default 13a tokenization) against the raw reference;
    returns (fields for bleu_SUBSET.json, the line to print)."""
    if not ref:
        return ({"bleu": None, "signature": None,
                 "note": "no raw reference found (pass --ref FILE): BLEU not computed"},
                f"no reference for subset {subset!r}: BLEU not computed (pass --ref FILE)")
    refs = read_lines(ref)
    if len(refs) != len(ordered):
        raise EvalError(f"{ref}: {len(refs)} reference lines for {len(ordered)} hypotheses")
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    result = bleu.corpus_score(ordered, [refs])
    return ({"bleu": round(result.score, 2), "signature": str(bleu.get_signature()),
             "score_line": str(result)},
            f"{result} ({bleu.get_signature()})")


def main(argv=None) -> int:
    a = arg_parser().parse_args(argv)
    try:
        ckpt = a.checkpoint or os.path.join(a.run_dir, "checkpoints", "checkpoint_best.pt")
        if not os.path.isfile(ckpt):
            raise EvalError(f"{ckpt}: checkpoint not found")
        if not os.path.isdir(a.data_bin):
            raise EvalError(f"{a.data_bin}: data-bin directory not found")
        ref = a.ref or find_reference(a.data_bin, a.subset, a.target_lang)
        if a.ref and not os.path.isfile(a.ref):
            raise EvalError(f"{a.ref}: reference not found")

        cmd = generate_command(a, ckpt)
        gen_path = os.path.join(a.run_dir, f"generate-{a.subset}.txt")
        hyp_path = os.path.join(a.run_dir, f"hyp_{a.subset}.txt")
        t0 = time.time()
        stdout = translate(cmd, gen_path, len(read_lines(ref)) if ref else None)
        seconds = time.time() - t0
        ordered = reorder(stdout, gen_path, hyp_path)
        fields, message = score(ordered, ref, a.subset)
        write_json(os.path.join(a.run_dir, f"bleu_{a.subset}.json"), {
            "subset": a.subset, "checkpoint": repo_relative(os.path.abspath(ckpt)),
            "reference": repo_relative(os.path.abspath(ref)) if ref else None,
            "hypotheses": repo_relative(os.path.abspath(hyp_path)), "sentences": len(ordered),
            "beam": a.beam, "remove_bpe": a.remove_bpe,
            "generate_seconds": round(seconds, 1),
            "command_line": command_line(cmd),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            **fields})
    except EvalError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
