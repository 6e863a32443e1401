"""Run one experiment of the study (a configs/*.json file) with fairseq-train, under a budget.

    run_experiment.py NAME --scale {mini,full} --data-bin DIR [--out runs] [--budget-minutes M]
                      [--smoke] [--resume | --force] [--run-name NAME] [--dry-run]
                      [--extra FAIRSEQ_ARGS...]

NAME is a config's number prefix ("07"), its full name, or an unambiguous prefix of it.
The command is `python -m fairseq_cli.train` of this interpreter with the config's "args",
then its "scales"[SCALE] flags, then the run's bookkeeping flags, then --extra (later flags
win in fairseq's parser). Everything goes to OUT/NAME-SCALE (OUT/NAME-SCALE-smoke with
--smoke): checkpoints/ (checkpoint_best.pt, checkpoint_last.pt), tb/ (tensorboard),
train.log (fairseq's output, also echoed), epochs.csv (one row per epoch), run.json (config,
scale, smoke: --resume refuses a run dir made for another) and summary.json. epochs.csv's
wall_seconds is cumulative training time: a resumed process continues the clock of the
checkpoint it loaded. The last line on stderr names the next command (evaluate, or resume).

Budget: fairseq's --stop-time-hours, set from --budget-minutes or the config's
"budget_minutes"[SCALE] (null: no budget). fairseq checks it after every update against the
trainer's cumulative training time (counted from the trainer's construction, so process
start-up is not included, and carried over in checkpoints on --resume); when it is exceeded
it validates, saves checkpoint_last.pt and (if the loss improved) checkpoint_best.pt,
prints the partial epoch's train line and exits normally. One update or the final
validation can still overrun: a watchdog interrupts fairseq at 1.25 x budget + 3 minutes
(SIGINT, even when the runner itself was started with SIGINT ignored, as `nohup ... &` does;
then SIGTERM, then SIGKILL).

--smoke: a short check of the whole pipeline (tiny model dims, --max-tokens 1024,
at most 3 epochs, 1-minute budget unless --budget-minutes is given)."""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional

# The runner re-exports the config and log helpers: callers (batch, benchmark, study, tests)
# need one import for a run's whole life.
from .configs import (CONFIG_DIR, ROOT, SCALES, SMOKE_BUDGET_MINUTES, USER_DIR, RunError,  # noqa: F401
                      budget_of, config_paths, find_config, load_config, run_dir_name,
                      validate_config)
from .fairseq_log import (EPOCH_COLUMNS, NFE_KEYS, POLICY_COUNTERS, RUNNER, epoch_rows,  # noqa: F401
                          nfe_stats, parse_log, throughput, write_epochs_csv)
from .files import command_line, write_json
from .models import SIZES
from .names import metric_names as mn

PROG = RUNNER
SMOKE_ARGS = [
    *SIZES["tiny"],
    "--max-tokens", "1024", "--lr", "1e-3", "--warmup-updates", "10", "--dropout", "0.1",
    "--max-epoch", "3", "--log-interval", "1",
]

# --------------------------------------------------------------------------------------------
# command


def language_pairs(data_bin: str) -> List[tuple]:
    pairs = set()
    for p in glob.glob(os.path.join(data_bin, "train.*-*.*.idx")):
        m = re.match(r"train\.([^.-]+)-([^.-]+)\.([^.]+)\.idx$", os.path.basename(p))
        if m and m.group(3) == m.group(1):
            pairs.add((m.group(1), m.group(2)))
    return sorted(pairs)


def resolve_pair(data_bin: str, src: Optional[str], tgt: Optional[str]) -> tuple:
    if src and tgt:
        return src, tgt
    pairs = language_pairs(data_bin)
    if len(pairs) == 1:
        return pairs[0]
    if not pairs:
        raise RunError(f"{data_bin}: no train.SRC-TGT.SRC.idx: not a fairseq translation data-bin")
    raise RunError(f"{data_bin}: several language pairs {pairs}: pass --source-lang/--target-lang")


def build_command(cfg: dict, scale: str, data_bin: str, run_dir: str,
                  budget_minutes: Optional[float] = None, smoke: bool = False,
                  extra: Optional[List[str]] = None, source_lang: Optional[str] = None,
                  target_lang: Optional[str] = None) -> List[str]:
    cmd = [sys.executable, "-m", "fairseq_cli.train", os.path.abspath(data_bin),
           "--user-dir", USER_DIR]
    cmd += list(cfg["args"]) + list(cfg["scales"][scale])
    if source_lang:
        cmd += ["--source-lang", source_lang]
    if target_lang:
        cmd += ["--target-lang", target_lang]
    cmd += ["--save-dir", os.path.join(run_dir, "checkpoints"),
            "--tensorboard-logdir", os.path.join(run_dir, "tb"),
            "--log-format", "json", "--log-interval", "10",
            "--no-epoch-checkpoints", "--keep-last-epochs", "1"]
    if smoke:
        cmd += SMOKE_ARGS
    if budget_minutes:
        cmd += ["--stop-time-hours", f"{budget_minutes / 60.0:.6g}"]
    cmd += list(extra or [])
    return cmd


def peak_rss_mb() -> Optional[float]:
    """Largest resident set of the finished child processes (here: the training process)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    size = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB (bytes on macOS)
    if not size:
        return None  # no child has finished: nothing was measured
    return round(size / (1024.0 if sys.platform != "darwin" else 1024.0 ** 2), 1)


def machine_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "hostname": platform.node()}
    try:
        from importlib.metadata import version
        info["torch"] = version("torch")
        info["fairseq"] = version("fairseq-fixed")
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        try:
            gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20).stdout.split("\n")
            info["gpus"] = [g.strip() for g in gpus if g.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def summarize(cfg: dict, scale: str, smoke: bool, parsed: dict, rows: List[dict], cmd: List[str],
              returncode: Optional[int], wall: float, budget: Optional[float], stop_reason: str,
              data_bin: str, pair: tuple, run_dir: str) -> dict:
    valid = [r for r in rows if isinstance(r["valid_loss"], (int, float))]
    best_row = min(valid, key=lambda r: r["valid_loss"]) if valid else None
    last_train = parsed["train"][-1] if parsed["train"] else {}
    last_inner = parsed["train_inner"][-1] if parsed["train_inner"] else {}
    updates = max([r.get("num_updates", 0) for r in parsed["train"] + parsed["valid"]
                   + parsed["train_inner"] if isinstance(r.get("num_updates"), int)] or [0])
    skipped = sum(r.get(mn.SKIPPED, 0) for r in parsed["train"]
                  if isinstance(r.get(mn.SKIPPED), (int, float)))
    ckpt = os.path.join(run_dir, "checkpoints", "checkpoint_best.pt")
    cuda = [r[mn.CUDA_PEAK] for r in parsed["train_inner"]
            if isinstance(r.get(mn.CUDA_PEAK), (int, float))]
    return {
        "config": cfg["name"],
        "scale": scale,
        "smoke": smoke,
        "status": "ok" if returncode == 0 else "failed",
        "returncode": returncode,
        "stop_reason": stop_reason,
        "best_valid_loss": best_row["valid_loss"] if best_row else None,
        "best_valid_nll_loss": best_row["valid_nll_loss"] if best_row else None,
        "best_epoch": best_row["epoch"] if best_row else None,
        "epochs": len(rows),
        "updates": updates,
        "wall_seconds": round(wall, 1),
        "processes": parsed.get("processes") or 1,
        "fairseq_wall_seconds": last_train.get("wall", last_inner.get("wall")),
        "budget_minutes": budget,
        "nfe_train_inner": nfe_stats(parsed["train_inner"]),
        "nfe_valid": nfe_stats(parsed["valid"]),
        mn.SKIPPED: skipped,
        **{k: sum(r.get(k, 0) for r in parsed["train"] if isinstance(r.get(k), (int, float)))
           for k in POLICY_COUNTERS},
        "tokens_per_second": throughput(parsed["train_inner"]),
        "peak_rss_mb": peak_rss_mb(),
        mn.CUDA_PEAK: max(cuda) if cuda else None,
        "checkpoint_best": ckpt if os.path.exists(ckpt) else None,
        "study": cfg["study"],
        "data_bin": os.path.abspath(data_bin),
        "language_pair": list(pair),
        "command": cmd,
        "command_line": command_line(cmd),
        "machine": machine_info(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# running


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default disposition.

    A runner started from a background shell (`nohup ... &`) inherits SIGINT ignored, and
    so would fairseq: Python installs no KeyboardInterrupt handler for an ignored SIGINT, and
    the watchdog's SIGINT would do nothing. (Only a disposition set to SIG_IGN survives exec.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_fairseq(cmd: List[str], log_path: str, hard_limit: Optional[float], quiet: bool,
                append: bool) -> tuple:
    """Run cmd, tee its merged output to log_path; returns (returncode, watchdog_fired, seconds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.time()
    fired = threading.Event()
    done = threading.Event()
    with open(log_path, "a" if append else "w", encoding="utf-8") as log:
        log.write(f"# {PROG}: {' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace",
                                env=env, start_new_session=True,
                                preexec_fn=_default_sigint)

        def stop(sig):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

        def watchdog():
            if done.wait(hard_limit):
                return
            fired.set()
            msg = f"# {PROG}: watchdog: still running after {hard_limit:.0f}s, interrupting\n"
            sys.stderr.write(msg)
            for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 0)):
                stop(sig)
                if done.wait(wait):
                    return

        if hard_limit:
            threading.Thread(target=watchdog, daemon=True).start()
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if not quiet:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            rc = proc.wait()
        except KeyboardInterrupt:
            stop(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                stop(signal.SIGKILL)
                proc.wait()
            done.set()
            raise
        finally:
            done.set()
    return rc, fired.is_set(), time.time() - start


def finish(run_dir: str, cfg: dict, scale: str, smoke: bool, cmd: List[str], rc: Optional[int],
           wall: float, budget: Optional[float], watchdog: bool, data_bin: str, pair: tuple) -> dict:
    with open(os.path.join(run_dir, "train.log"), encoding="utf-8", errors="replace") as f:
        parsed = parse_log(f)
    rows = epoch_rows(parsed)
    write_epochs_csv(os.path.join(run_dir, "epochs.csv"), rows)
    if watchdog:
        reason = "watchdog"
    elif rc != 0:
        reason = "error" if rc is not None else "interrupted"
    elif parsed["stop_reason"]:
        reason = parsed["stop_reason"]
    else:
        reason = "max_epoch" if parsed["done"] else "unknown"
    summary = summarize(cfg, scale, smoke, parsed, rows, cmd, rc, wall, budget, reason,
                        data_bin, pair, run_dir)
    write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


RUN_FILE = "run.json"


def run_identity(name: str, scale: str, smoke: bool) -> dict:
    return {"config": name, "scale": scale, "smoke": smoke}


def check_resumable(run_dir: str, name: str, scale: str, smoke: bool) -> None:
    """Refuse to --resume a run dir made for another config, scale or smoke setting: the
    checkpoint would not even load (other dims), or the curves would mix two runs."""
    have = None
    for fname in (RUN_FILE, "summary.json"):
        try:
            with open(os.path.join(run_dir, fname), encoding="utf-8") as f:
                have = json.load(f)
            break
        except (OSError, ValueError):
            continue
    if have is None:
        return  # nothing recorded (a run of an older runner killed at once): nothing to compare
    have = {k: have.get(k) for k in ("config", "scale", "smoke")}
    want = run_identity(name, scale, smoke)
    diff = [f"{k} {have[k]!r} (asked {want[k]!r})" for k in want if have[k] != want[k]]
    if diff:
        raise RunError(f"{run_dir} holds a run of another setting: {', '.join(diff)}; "
                       "use another --out/--run-name, or --force to start over")


def next_command(a, run_dir: str, ok: bool) -> str:
    """What to run after this: score the run, or resume it when it did not finish."""
    def rel(path):
        r = os.path.relpath(path)
        return path if r.startswith(os.pardir + os.sep + os.pardir) else r
    if ok:
        cmd = [rel(sys.executable), rel(os.path.join(ROOT, "scripts", "evaluate.py")), rel(run_dir),
               "--data-bin", a.data_bin]
    else:
        cmd = [rel(sys.executable), rel(os.path.join(ROOT, "scripts", "run_experiment.py")), a.name,
               "--scale", a.scale, "--data-bin", a.data_bin, "--out", a.out]
        if a.run_name:
            cmd += ["--run-name", a.run_name]
        if a.smoke:
            cmd.append("--smoke")
        if a.budget_minutes is not None:
            cmd += ["--budget-minutes", f"{a.budget_minutes:g}"]
        cmd.append("--resume")
        if a.extra:
            cmd += ["--extra"] + list(a.extra)
    return " ".join(shlex.quote(c) for c in cmd)


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("name", help="config number prefix (07), name, or unambiguous prefix")
    p.add_argument("--scale", choices=SCALES, required=True)
    p.add_argument("--data-bin", required=True, metavar="DIR")
    p.add_argument("--out", default="runs", metavar="DIR", help="runs directory (default runs/)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="training-time budget (default: the config's; 0 = none)")
    p.add_argument("--smoke", action="store_true", help="tiny dims, <= 3 epochs, 1-minute budget")
    p.add_argument("--source-lang", help="default: inferred from the data-bin")
    p.add_argument("--target-lang")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue an existing run dir from its checkpoint_last.pt")
    g.add_argument("--force", action="store_true", help="delete an existing run dir first")
    p.add_argument("--run-name", metavar="NAME",
                   help="run directory OUT/NAME (default NAME-SCALE of the config), for variants")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    p.add_argument("--quiet", action="store_true", help="do not echo fairseq's output")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="everything after --extra goes to fairseq-train, last")
    return p


class Plan:
    """What one run will do: its config, data, run dir, budget and fairseq command."""

    def __init__(self, a):
        self.cfg = load_config(find_config(a.name))
        if not os.path.isdir(a.data_bin):
            raise RunError(f"{a.data_bin}: data-bin directory not found")
        self.pair = resolve_pair(a.data_bin, a.source_lang, a.target_lang)
        if a.run_name is not None and (not a.run_name or os.sep in a.run_name or a.run_name.startswith(".")):
            raise RunError(f"--run-name {a.run_name!r}: must be a plain directory name")
        self.run_dir = os.path.abspath(os.path.join(
            a.out, a.run_name or run_dir_name(self.cfg, a.scale, a.smoke)))
        self.budget = budget_of(self.cfg, a.scale, a.budget_minutes, a.smoke)
        self.cmd = build_command(self.cfg, a.scale, a.data_bin, self.run_dir, self.budget, a.smoke,
                                 a.extra, a.source_lang, a.target_lang)


def claim_run_dir(a, plan: Plan) -> None:
    """Start over (--force), continue (--resume, same setting only) or refuse an existing dir."""
    run_dir = plan.run_dir
    if os.path.exists(run_dir) and os.listdir(run_dir):
        if a.force:
            shutil.rmtree(run_dir)
        elif not a.resume:
            raise RunError(f"{run_dir} exists: --resume to continue it from its "
                           "checkpoint_last.pt, or --force to start over")
        else:
            check_resumable(run_dir, plan.cfg["name"], a.scale, a.smoke)


def record_identity(a, plan: Plan) -> None:
    os.makedirs(plan.run_dir, exist_ok=True)
    with open(os.path.join(plan.run_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(plan.cfg, f, indent=1)
    with open(os.path.join(plan.run_dir, RUN_FILE), "w", encoding="utf-8") as f:
        json.dump(run_identity(plan.cfg["name"], a.scale, a.smoke), f, indent=1)


def train(a, plan: Plan) -> int:
    """Run fairseq under the watchdog, then write epochs.csv and summary.json; exit status."""
    cfg, run_dir, budget = plan.cfg, plan.run_dir, plan.budget
    hard_limit = budget * 60 * 1.25 + 180 if budget else None
    print(f"{PROG}: {cfg['name']} ({a.scale}{', smoke' if a.smoke else ''}) -> {run_dir}; "
          f"budget {f'{budget:g} min' if budget else 'none'}", file=sys.stderr)
    start = time.time()
    try:
        rc, fired, wall = run_fairseq(plan.cmd, os.path.join(run_dir, "train.log"), hard_limit,
                                      a.quiet, append=a.resume)
    except KeyboardInterrupt:
        finish(run_dir, cfg, a.scale, a.smoke, plan.cmd, None, time.time() - start, budget, False,
               a.data_bin, plan.pair)
        print(f"{PROG}: interrupted; partial epochs.csv and summary.json in {run_dir}", file=sys.stderr)
        print(f"{PROG}: next: {next_command(a, run_dir, ok=False)}", file=sys.stderr)
        return 130
    summary = finish(run_dir, cfg, a.scale, a.smoke, plan.cmd, rc, wall, budget, fired, a.data_bin,
                     plan.pair)
    print(f"{PROG}: {summary['status']} ({summary['stop_reason']}): best valid loss "
          f"{summary['best_valid_loss']} after {summary['updates']} updates, "
          f"{summary['epochs']} epochs, {summary['wall_seconds']}s -> {run_dir}", file=sys.stderr)
    print(f"{PROG}: next: {next_command(a, run_dir, ok=rc == 0 and not fired)}", file=sys.stderr)
    return 124 if fired else rc


def main(argv=None) -> int:
    a = arg_parser().parse_args(argv)
    try:
        plan = Plan(a)
        if a.dry_run:
            print(" ".join(shlex.quote(c) for c in plan.cmd))
            return 0
        claim_run_dir(a, plan)
    except RunError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    record_identity(a, plan)
    return train(a, plan)


if __name__ == "__main__":
    sys.exit(main())
