"""Reproduce one experiment of the study end to end (what scripts/experiments/NN-name.sh run).

    run_study_experiment.py NAME|all [--scale mini|full] [--data DIR] [--out DIR] [--smoke]
                            [--compare NAME ...] [--dry-run] [--force] [--budget-minutes M]

NAME is a config of configs/ (its number, full name or unambiguous prefix); "all" runs the
nine in order. The steps, each one a call of an existing script with this interpreter:

  1. data     prepare_multi30k.py builds the Multi30k En-De data-bin if it is missing (from
              --data DIR, a local copy of the plain files; without it, the official release
              is downloaded). It is idempotent: with --data it runs and checks every time.
  2. train    run_experiment.py NAME --scale SCALE under the config's budget, in
              OUT/NAME-SCALE. A run dir without a finished summary is resumed (--resume, which
              refuses a dir of another scale); a finished one is kept (--force retrains).
  3. score    evaluate.py: test2016 with sacreBLEU (skipped when bleu_test.json is newer
              than the best checkpoint).
  4. figures  plot_results.py: this run and the runs it is compared with (--compare, those
              present in OUT) into OUT/figures-SCALE/NAME (all: OUT/figures-SCALE).
  5. table    results_table.py: the run's row beside the study's numbers, and the study's
              claim the experiment tests (from the header of scripts/experiments/NAME.sh).

--smoke: the whole pipeline in about a minute: a data-bin of the first 500 lines of each
split (prepare_multi30k.py --head 500 --vocab-size 500, in DATA_BIN-smoke), a tiny model
(run_experiment.py --smoke: <= 3 epochs, 1-minute budget), beam 2. --dry-run prints the
commands (and the decisions, as # comments) without running anything.
Exit status: 0; 2 for bad arguments or data; otherwise the failed step's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from typing import List, Optional

from . import runner as rx

ROOT = rx.ROOT
SCRIPTS = os.path.join(ROOT, "scripts")  # the scripts each step runs
SHELL_DIR = os.path.join(SCRIPTS, "experiments")

PROG = os.environ.get("RUN_STUDY_PROG") or "run_study_experiment"
DEFAULT_DATA_BIN = os.path.join(ROOT, "data-bin", "multi30k_en_de")
DEFAULT_OUT = os.path.join(ROOT, "runs", "study")
SMOKE_HEAD, SMOKE_VOCAB = 500, 500
EVAL_ARGS = ["--beam", "5", "--max-len-a", "1.2", "--max-len-b", "10"]  # docs/RESULTS.md's
SMOKE_EVAL_ARGS = ["--beam", "2", "--max-len-a", "1.2", "--max-len-b", "10"]


class StudyError(Exception):
    """One line on stderr, exit status 2."""


class StepFailed(Exception):
    def __init__(self, step: str, rc: int):
        super().__init__(f"step {step} failed (exit {rc})")
        self.rc = rc


def claim_of(name: str) -> List[str]:
    """The comment lines at the top of scripts/experiments/NAME.sh: the claim it tests."""
    path = os.path.join(SHELL_DIR, f"{name}.sh")
    lines = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("#!"):
                    continue
                if not line.startswith("#"):
                    break
                lines.append(line[1:].strip())
    except OSError:
        pass
    return lines


def show(cmd: List[str]) -> str:
    def rel(c):
        if os.path.isabs(c) and c.startswith(os.getcwd() + os.sep):
            return os.path.relpath(c)
        return c
    return " ".join(shlex.quote(rel(c)) for c in cmd)


class Study:
    def __init__(self, a):
        self.a = a
        self.py = sys.executable
        self.suffix = f"{a.scale}{'-smoke' if a.smoke else ''}"

    def say(self, msg: str) -> None:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)

    def run(self, step: str, cmd: List[str], note: str = "") -> int:
        """Run (or, with --dry-run, print) one step's command; StepFailed if it fails."""
        if self.a.dry_run:
            print(show(cmd) + (f"  # {note}" if note else ""))
            return 0
        self.say(f"[{step}] {show(cmd)}")
        t0 = time.time()
        rc = subprocess.call(cmd)
        if rc != 0:
            raise StepFailed(step, rc)
        self.say(f"[{step}] done in {time.time() - t0:.0f}s")
        return 0

    def script(self, name: str, *args: str) -> List[str]:
        return [self.py, os.path.join(SCRIPTS, name), *args]

    # 1 ---------------------------------------------------------------------------------------
    def data(self) -> str:
        a = self.a
        data_bin = os.path.abspath(a.data_bin or DEFAULT_DATA_BIN + ("-smoke" if a.smoke else ""))
        made = os.path.isfile(os.path.join(data_bin, "stamp.json"))
        if a.data is not None and not os.path.isdir(a.data):
            raise StudyError(f"--data {a.data}: not a directory (a local Multi30k copy: "
                             "train.en, train.de, valid.*, test2016.*, test2017.*, test2018.*)")
        if a.data is None and (made or rx.language_pairs(data_bin)):
            self.note(f"data-bin {data_bin} present: used as is (--data DIR checks it against "
                      "the source)")
            return data_bin
        if a.data is None and a.smoke:
            raise StudyError(f"--smoke needs --data DIR (a local Multi30k copy) to build "
                             f"{data_bin} from its first {SMOKE_HEAD} lines")
        cmd = self.script("prepare_multi30k.py", "--out", data_bin)
        if a.data is not None:
            cmd[2:2] = ["--from", os.path.abspath(a.data)]
        if a.smoke:
            cmd += ["--head", str(SMOKE_HEAD), "--vocab-size", str(SMOKE_VOCAB)]
        try:
            self.run("data", cmd, "idempotent: does nothing when the data-bin is up to date")
        except StepFailed as e:
            if a.data is None:
                raise StudyError(f"no Multi30k data: {data_bin} is missing and the download failed "
                                 "(see above); pass --data DIR, a local copy of the plain files") from None
            raise StudyError(f"preparing the data-bin {data_bin} from {a.data} failed (exit {e.rc}, "
                             "see above)") from None
        return data_bin

    def note(self, msg: str) -> None:
        if self.a.dry_run:
            print(f"# {msg}")
        else:
            self.say(msg)

    # 2 ---------------------------------------------------------------------------------------
    def train(self, cfg: dict, data_bin: str) -> str:
        a = self.a
        run_dir = os.path.join(a.out, rx.run_dir_name(cfg, a.scale, a.smoke))
        cmd = self.script("run_experiment.py", cfg["name"], "--scale", a.scale,
                          "--data-bin", data_bin, "--out", a.out)
        if a.smoke:
            cmd.append("--smoke")
        if a.budget_minutes is not None:
            cmd += ["--budget-minutes", f"{a.budget_minutes:g}"]
        summary = read_json(os.path.join(run_dir, "summary.json"))
        started = os.path.isdir(run_dir) and bool(os.listdir(run_dir))
        if a.force:
            cmd.append("--force")
            note = "--force: trains from scratch"
        elif summary and summary.get("status") == "ok":
            self.note(f"{run_dir} is trained already (summary.json: {summary.get('stop_reason')}): "
                      "not retrained (--force to retrain)")
            return run_dir
        elif started:
            cmd.append("--resume")
            note = "an unfinished run: continues from its checkpoint_last.pt"
        else:
            note = "a new run"
        try:
            self.run("train", cmd, note)
        except StepFailed as e:
            self.say(f"training {cfg['name']} stopped (exit {e.rc}): the same command resumes it")
            raise
        return run_dir

    # 3 ---------------------------------------------------------------------------------------
    def score(self, run_dir: str, data_bin: str) -> None:
        ckpt = os.path.join(run_dir, "checkpoints", "checkpoint_best.pt")
        bleu = os.path.join(run_dir, "bleu_test.json")
        if (not self.a.force and os.path.isfile(bleu) and os.path.isfile(ckpt)
                and os.path.getmtime(bleu) >= os.path.getmtime(ckpt)):
            self.note(f"{bleu} is newer than the best checkpoint: not rescored")
            return
        extra = SMOKE_EVAL_ARGS if self.a.smoke else EVAL_ARGS
        self.run("score", self.script("evaluate.py", run_dir, "--data-bin", data_bin, *extra),
                 "test2016, sacreBLEU on detokenized text")

    # 4, 5 ------------------------------------------------------------------------------------
    def report(self, run_dirs: List[str], figures: str, title: str) -> None:
        present = [d for d in run_dirs if self.a.dry_run or os.path.isfile(os.path.join(d, "summary.json"))]
        if not present:
            return
        self.run("figures", self.script("plot_results.py", *present, "--out", figures,
                                        "--title-prefix", title))
        self.run("table", self.script("results_table.py", *present),
                 "its row, beside the study's loss and hours")

    def compared(self, names: List[str]) -> List[str]:
        dirs = []
        for n in names:
            cfg = rx.load_config(rx.find_config(n))
            d = os.path.join(self.a.out, rx.run_dir_name(cfg, self.a.scale, self.a.smoke))
            if os.path.isfile(os.path.join(d, "summary.json")):
                dirs.append(d)
            else:
                self.note(f"compared run {cfg['name']} is not in {self.a.out} yet: "
                          f"scripts/experiments/{cfg['name']}.sh adds it to the figures")
        return dirs

    def one(self, cfg: dict) -> int:
        data_bin = self.data()
        run_dir = self.train(cfg, data_bin)
        self.score(run_dir, data_bin)
        figures = os.path.join(self.a.out, f"figures-{self.suffix}", cfg["name"])
        self.report([run_dir] + self.compared(self.a.compare), figures, f"{self.a.scale}:")
        self.print_claim(cfg)
        return 0

    def all(self, configs: List[dict]) -> int:
        data_bin = self.data()
        done, failed = [], []
        for cfg in configs:
            try:
                run_dir = self.train(cfg, data_bin)
                self.score(run_dir, data_bin)
                done.append(run_dir)
            except StepFailed as e:
                failed.append(cfg["name"])
                self.say(f"{cfg['name']}: {e}; going on with the others")
                if e.rc == 130:
                    raise
        self.report(done, os.path.join(self.a.out, f"figures-{self.suffix}"), f"{self.a.scale}:")
        for cfg in configs:
            self.print_claim(cfg)
        if failed:
            self.say(f"failed: {', '.join(failed)}")
            return 1
        return 0

    def print_claim(self, cfg: dict) -> None:
        if self.a.dry_run:
            return
        study = cfg["study"]
        print(f"\n{cfg['name']}: " + " ".join(claim_of(cfg["name"])))
        print(f"  study: best valid loss {study['best_valid_loss']}, {study['train_hours']} h "
              f"(1080 Ti, transformer-base size); this project's verdict at mini scale: "
              f"docs/RESULTS.md, 'The study's conclusions against this evidence'")


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser(name: Optional[str]) -> argparse.ArgumentParser:
    doc = __doc__.splitlines()
    claim = claim_of(name) if name else []
    description = "\n".join(claim + [""] if claim else []) + doc[0]
    usage = None
    if os.environ.get("RUN_STUDY_PROG"):  # a scripts/experiments/*.sh: NAME is given by it
        usage = (f"{PROG} [--scale mini|full] [--data DIR] [--data-bin DIR] [--out DIR] "
                 "[--smoke] [--dry-run] [--force] [--budget-minutes M]")
    p = OneLineParser(prog=PROG, description=description, usage=usage,
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="\n".join(doc[2:]))
    p.add_argument("name", metavar="NAME|all", help="a config of configs/, or all")
    p.add_argument("--scale", choices=rx.SCALES, default="mini", help="default mini")
    p.add_argument("--data", metavar="DIR", help="local Multi30k copy (plain files); "
                   "default: the data-bin if present, else download the official release")
    p.add_argument("--data-bin", metavar="DIR", help="default data-bin/multi30k_en_de "
                   "(-smoke with --smoke) in the repository")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help="runs directory "
                   "(default runs/study in the repository)")
    p.add_argument("--smoke", action="store_true", help="the whole pipeline in about a minute")
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME",
                   help="runs drawn beside this one (those present in OUT)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="training budget (default: the config's; 0 = none)")
    p.add_argument("--force", action="store_true", help="retrain and rescore from scratch")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        stem = first if first in (None, "all") else os.path.basename(rx.find_config(first))[:-5]
    except rx.RunError:
        stem = None
    a = parser(stem).parse_args(argv)
    a.out = os.path.abspath(a.out)
    try:
        if a.name == "all":
            configs = [rx.load_config(p) for p in rx.config_paths()]
        else:
            configs = [rx.load_config(rx.find_config(a.name))]
        for n in a.compare:
            rx.find_config(n)
        if not a.dry_run and importlib.util.find_spec("fairseq") is None:
            raise StudyError(f"{sys.executable} has no fairseq: run scripts/setup.sh, "
                             "or set PYTHON to the project's interpreter")
        study = Study(a)
        return study.all(configs) if a.name == "all" else study.one(configs[0])
    except (StudyError, rx.RunError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except StepFailed as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.rc
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
