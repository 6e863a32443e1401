#!/usr/bin/env python3
"""Write a trained model's directory that users can move: what loading needs, nothing else.

    export_model.py RUN_DIR OUT_DIR [--checkpoint FILE] [--data-bin DIR] [--data-licence TEXT]
                    [--example SENTENCE] [--force]

RUN_DIR: a run of scripts/run_experiment.py or scripts/demo.sh (RUN_DIR/checkpoints/...), or
a fairseq --save-dir. OUT_DIR gets:

  model.pt           the checkpoint (default checkpoint_best.pt) without optimizer state,
                     its paths scrubbed and its language pair recorded
  dict.SRC.txt, dict.TGT.txt   the dictionaries
  spm.model          the sentencepiece model, when the data-bin has one
  README.md          how to load it (with --example, else the first raw test source the
                     data-bin keeps, as the sentence to translate), the training command
                     (RUN_DIR/summary.json, else RUN_DIR/train_command.txt), the data's licence
                     note (--data-licence, else a LICENSE/NOTICE file of the data-bin, else
                     Multi30k's terms for a prepare_multi30k.py data-bin) and the measured test
                     BLEU (RUN_DIR/bleu_test.json of scripts/evaluate.py, else the BLEU line
                     of RUN_DIR/generate.txt, else "not measured")

The data-bin is --data-bin, else the run's summary.json "data_bin", else the checkpoint's own
data path. OUT_DIR is built beside itself and renamed into place; an existing non-empty
OUT_DIR is kept unless --force. Load it with ``node_transformer.from_pretrained(OUT_DIR)`` or
``fairseq-interactive OUT_DIR --path OUT_DIR/model.pt ...`` (see OUT_DIR/README.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
from argparse import Namespace
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # a run's data path may be relative to it
PROG = "export_model"
CHECKPOINT_NAMES = ("checkpoint_best.pt", "checkpoint_last.pt")
SPM_NAMES = ("spm.model", "sentencepiece.bpe.model")
LICENCE_FILES = ("LICENSE", "LICENSE.txt", "LICENCE", "LICENCE.txt", "NOTICE", "NOTICE.txt")
# What prepare_multi30k.py's docstring says of the data it prepares (its data-bin holds
# subsets.json).
MULTI30K_NOTE = ("Multi30k (Elliott et al. 2016) carries no licence file and is for "
                 "non-commercial research use; the data itself is not included here.")
# Paths of the training machine, meaningless elsewhere: cleared in the exported config.
PATH_KEYS = ("user_dir", "save_dir", "tensorboard_logdir", "wandb_project", "restore_file")


class ExportError(Exception):
    """Reported as one line, exit status 2."""


def find_checkpoint(run_dir: str, name: Optional[str]) -> str:
    if name and os.path.isfile(name):
        return name
    dirs = [os.path.join(run_dir, "checkpoints"), run_dir]
    for d in dirs:
        for n in ([name] if name else CHECKPOINT_NAMES):
            path = os.path.join(d, n)
            if os.path.isfile(path):
                return path
    wanted = name or " or ".join(CHECKPOINT_NAMES)
    raise ExportError(f"{run_dir}: no {wanted} in it or in its checkpoints/")


def _dicts(data_bin: str) -> List[str]:
    return sorted(glob.glob(os.path.join(data_bin, "dict.*.txt")))


def find_data_bin(explicit: Optional[str], run_dir: str, cfg: dict) -> str:
    candidates = []
    if explicit:
        if not _dicts(explicit):
            raise ExportError(f"{explicit}: no dict.*.txt: not a fairseq data-bin")
        return explicit
    summary = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary):
        with open(summary, encoding="utf-8") as f:
            candidates.append(json.load(f).get("data_bin"))
    data = (cfg.get("task") or {}).get("data")
    if data:
        candidates += [data, os.path.join(ROOT, data)]
    for c in candidates:
        if c and os.path.isdir(c) and _dicts(c):
            return c
    raise ExportError(f"{run_dir}: cannot find the data-bin with the dictionaries "
                      f"(tried {[c for c in candidates if c]}): pass --data-bin DIR")


def language_pair(cfg: dict, data_bin: str) -> tuple:
    task = cfg.get("task") or {}
    src, tgt = task.get("source_lang"), task.get("target_lang")
    if src and tgt:
        return src, tgt
    for p in glob.glob(os.path.join(data_bin, "train.*-*.*.idx")):
        m = re.match(r"train\.([^.-]+)-([^.-]+)\.", os.path.basename(p))
        if m:
            return m.group(1), m.group(2)
    langs = [os.path.basename(p)[5:-4] for p in _dicts(data_bin)]
    raise ExportError(f"{data_bin}: cannot tell the language pair (dictionaries {langs}, no "
                      "train.SRC-TGT.*.idx, none in the checkpoint)")


def strip_state(state: dict, src: str, tgt: str) -> dict:
    """The checkpoint with what loading reads: config, weights, the last optimizer record
    without the optimizer's tensors (fairseq's loader expects the record)."""
    cfg = dict(state["cfg"])
    for group in ("common", "checkpoint", "task"):
        if isinstance(cfg.get(group), dict):
            cfg[group] = dict(cfg[group])
    model_cfg = cfg.get("model")
    if isinstance(model_cfg, Namespace):
        model_cfg = cfg["model"] = Namespace(**vars(model_cfg))
    # the task's too: node_translation keeps --save-dir (task.NodeTranslationConfig)
    for target in (cfg.get("common"), cfg.get("checkpoint"), cfg.get("task"), model_cfg):
        for key in PATH_KEYS:
            if isinstance(target, dict) and target.get(key):
                target[key] = None
            elif isinstance(target, Namespace) and getattr(target, key, None):
                setattr(target, key, None)
    for target in (cfg.get("task"), model_cfg):
        changes = {"data": ".", "source_lang": src, "target_lang": tgt}
        if isinstance(target, dict):
            target.update(changes)
        elif isinstance(target, Namespace):
            for k, v in changes.items():
                setattr(target, k, v)
    history = state.get("optimizer_history") or [{}]
    last = {k: v for k, v in history[-1].items() if k != "optimizer"}
    extra = state.get("extra_state") or {}
    return {
        "cfg": cfg,
        "model": state["model"],
        "optimizer_history": [last],
        "extra_state": {"epoch": extra.get("epoch"), "val_loss": extra.get("val_loss"),
                        "train_iterator": {"epoch": extra.get("epoch") or 1}},
    }


def licence_note(explicit: Optional[str], data_bin: str) -> str:
    if explicit:
        return explicit
    for name in LICENCE_FILES:
        path = os.path.join(data_bin, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f"from the data-bin's {name}:\n\n" + f.read().strip()
    if os.path.isfile(os.path.join(data_bin, "subsets.json")):
        return MULTI30K_NOTE
    return "not recorded: ask whoever prepared the data-bin (pass --data-licence TEXT)."


def measured_bleu(run_dir: str) -> str:
    path = os.path.join(run_dir, "bleu_test.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        if r.get("bleu") is not None:
            return (f"{r['bleu']} (sacreBLEU on detokenized test, {r.get('signature')}; "
                    f"scripts/evaluate.py, {r.get('date', 'date not recorded')})")
    path = os.path.join(run_dir, "generate.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if "BLEU" in line]
        if lines:
            m = re.search(r"(BLEU4? = [\d.]+)", lines[-1])
            return f"{m.group(1) if m else lines[-1]} (fairseq-generate on the test split's tokens)"
    return ("not measured (run scripts/evaluate.py RUN_DIR --data-bin DIR, then export again)")


def training_command(run_dir: str) -> str:
    summary = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary):
        with open(summary, encoding="utf-8") as f:
            line = json.load(f).get("command_line")
        if line:
            return line
    path = os.path.join(run_dir, "train_command.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return "not recorded (no summary.json or train_command.txt in the run directory)"


def example_sentence(explicit: Optional[str], data_bin: str, src: str) -> str:
    """--example, else the first raw test source prepare_multi30k.py kept in the data-bin."""
    if explicit:
        return explicit
    meta = os.path.join(data_bin, "subsets.json")
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8") as f:
            m = json.load(f)
        base = (m.get("subsets") or {}).get("test")
        path = os.path.join(data_bin, m.get("raw_dir", "raw"), f"{base}.{src}")
        if base and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                first = f.readline().strip()
            if first:
                return first
    return "a sentence in the source language"


def readme(name: str, src: str, tgt: str, spm: bool, command: str, bleu: str, licence: str,
           checkpoint: str, updates, example: str) -> str:
    bpe_flags = " \\\n    --bpe sentencepiece --sentencepiece-model DIR/spm.model" if spm else ""
    return f"""# {name}: a NODE-Transformer ({src} -> {tgt})

Exported by scripts/export_model.py, without its optimizer state, from
`{checkpoint}` ({updates} updates).
Files: model.pt, dict.{src}.txt, dict.{tgt}.txt{", spm.model" if spm else ""}, this README.

## Use it

```python
import node_transformer                      # this repository's package, installed
model = node_transformer.from_pretrained("DIR")   # DIR: this directory
print(model.translate([{json.dumps(example, ensure_ascii=False)}], beam=5))
```

Or with fairseq's own tool (from the repository's root), one sentence per line on standard
input:

```bash
fairseq-interactive DIR --user-dir node_transformer --task node_translation \\
    --source-lang {src} --target-lang {tgt} --path DIR/model.pt --beam 5{bpe_flags}
```

## Measured test BLEU

{bleu}

## Training command

```
{command}
```

## Data licence

{licence}
"""


def export(run_dir: str, out_dir: str, checkpoint: Optional[str] = None,
           data_bin: Optional[str] = None, data_licence: Optional[str] = None,
           force: bool = False, example: Optional[str] = None) -> str:
    if not os.path.isdir(run_dir):
        raise ExportError(f"{run_dir}: not a directory")
    ckpt = find_checkpoint(run_dir, checkpoint)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir}: exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ExportError(f"{out_dir}: exists and is not empty (--force replaces it)")
    if data_bin and not _dicts(data_bin):
        raise ExportError(f"{data_bin}: no dict.*.txt: not a fairseq data-bin")

    # Only now the slow imports: a mistyped argument is answered at once.
    import torch

    from . import fairseq_fixes  # noqa: F401  (allow-lists what fairseq checkpoints hold)
    try:
        state = torch.load(ckpt, map_location="cpu")
    except Exception as e:  # noqa: BLE001  (any unreadable file: one line)
        raise ExportError(f"{ckpt}: cannot load: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("cfg"), dict):
        raise ExportError(f"{ckpt}: not a fairseq checkpoint (no model weights and config)")
    cfg = state["cfg"]
    data = find_data_bin(data_bin, run_dir, cfg)
    src, tgt = language_pair(cfg, data)
    dicts = {lang: os.path.join(data, f"dict.{lang}.txt") for lang in (src, tgt)}
    for lang, path in dicts.items():
        if not os.path.isfile(path):
            raise ExportError(f"{data}: no dict.{lang}.txt")
    spm = next((os.path.join(data, n) for n in SPM_NAMES if os.path.isfile(os.path.join(data, n))), None)

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is a plain directory
    try:
        torch.save(strip_state(state, src, tgt), os.path.join(tmp, "model.pt"))
        for lang, path in dicts.items():
            shutil.copyfile(path, os.path.join(tmp, f"dict.{lang}.txt"))
        if spm:
            shutil.copyfile(spm, os.path.join(tmp, "spm.model"))
        updates = (state.get("optimizer_history") or [{}])[-1].get("num_updates", "?")
        shown = os.path.relpath(ckpt)
        shown = os.path.abspath(ckpt) if shown.startswith("..") else shown
        text = readme(os.path.basename(os.path.abspath(out_dir)), src, tgt, bool(spm),
                      training_command(run_dir), measured_bleu(run_dir),
                      licence_note(data_licence, data), shown, updates,
                      example_sentence(example, data, src))
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(text)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--checkpoint", help="file name in RUN_DIR/checkpoints, or a path "
                   "(default checkpoint_best.pt, else checkpoint_last.pt)")
    p.add_argument("--data-bin", metavar="DIR", help="the data-bin it was trained on")
    p.add_argument("--data-licence", metavar="TEXT", help="the data's licence note")
    p.add_argument("--example", metavar="SENTENCE", help="the sentence the README translates")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    a = p.parse_args(argv)
    try:
        out = export(a.run_dir, a.out_dir, a.checkpoint, a.data_bin, a.data_licence, a.force,
                     a.example)
    except ExportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"{PROG}: wrote {out} ({', '.join(sorted(os.listdir(out)))}; "
          f"{size / 2 ** 20:.1f} MiB)", file=sys.stderr)
    print(f"{PROG}: load it with node_transformer.from_pretrained({out!r})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
