#!/usr/bin/env python3
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
at most 3 epochs, 1-minute budget unless --budget-minutes is given).
"""

from __future__ import annotations

import argparse
import csv
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
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")
USER_DIR = os.path.join(ROOT, "node_transformer")
PROG = "run_experiment"
SCALES = ("mini", "full")
REQUIRED_KEYS = ("name", "description", "study", "args", "scales", "budget_minutes")
STUDY_KEYS = ("best_valid_loss", "train_hours", "note")

SMOKE_ARGS = [
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--max-tokens", "1024", "--lr", "1e-3", "--warmup-updates", "10", "--dropout", "0.1",
    "--max-epoch", "3", "--log-interval", "1",
]
SMOKE_BUDGET_MINUTES = 1.0

NFE_KEYS = ("nfe_enc_fwd", "nfe_enc_bwd", "nfe_dec_fwd", "nfe_dec_bwd")
POLICY_COUNTERS = ("node_fixed_step", "node_deferred", "node_replayed")  # --node-on-budget
PENALTY_KEYS = ("rnode_kinetic", "rnode_jacobian")
EPOCH_COLUMNS = (
    ["epoch", "train_loss", "valid_loss", "best_valid_loss", "wall_seconds", "updates",
     "train_nll_loss", "valid_nll_loss"]
    + [f"train_{k}" for k in NFE_KEYS] + [f"valid_{k}" for k in NFE_KEYS]
    + ["node_skipped", "valid_node_skipped"]
    + list(POLICY_COUNTERS) + [f"train_{k}" for k in PENALTY_KEYS] + ["train_wps"]
)

LOG_LINE = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")
SEGMENT_MARK = f"# {PROG}: "  # run_fairseq writes it to train.log at each process start
LOADED = re.compile(r"Loaded checkpoint \S+ \(epoch \d+ @ (\d+) updates\)")
STOP_REASONS = (
    ("Stopping training due to cumulative_training_time", "budget"),
    ("Stopping training due to num_updates", "max_update"),
    ("early stop since valid performance hasn't improved", "patience"),
    ("stopping training because current learning rate", "min_lr"),
)


class RunError(Exception):
    """Reported as one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# configs


def config_paths() -> List[str]:
    return sorted(glob.glob(os.path.join(CONFIG_DIR, "*.json")))


def validate_config(cfg: dict, path: str = "?") -> None:
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise RunError(f"{path}: missing keys {missing}")
    if cfg["name"] != os.path.splitext(os.path.basename(path))[0] and path != "?":
        raise RunError(f"{path}: name {cfg['name']!r} differs from the file name")
    for k in STUDY_KEYS:
        if k not in cfg["study"]:
            raise RunError(f"{path}: study.{k} missing")
    for k in ("best_valid_loss", "train_hours"):
        v = cfg["study"][k]
        if v is not None and not isinstance(v, (int, float)):
            raise RunError(f"{path}: study.{k} must be a number or null")
    if not isinstance(cfg["args"], list) or not all(isinstance(a, str) for a in cfg["args"]):
        raise RunError(f"{path}: args must be a list of strings")
    for scale in SCALES:
        flags = cfg["scales"].get(scale)
        if not isinstance(flags, list) or not all(isinstance(a, str) for a in flags):
            raise RunError(f"{path}: scales.{scale} must be a list of strings")
        if scale not in cfg["budget_minutes"]:
            raise RunError(f"{path}: budget_minutes.{scale} missing")


def find_config(name: str) -> str:
    paths = config_paths()
    stems = {os.path.splitext(os.path.basename(p))[0]: p for p in paths}
    if name.endswith(".json"):
        name = os.path.splitext(os.path.basename(name))[0]
    if name in stems:
        return stems[name]
    hits = []
    if name.isdigit():  # "7" or "07": the number prefix
        hits = [p for s, p in stems.items() if s.split("-", 1)[0].isdigit()
                and int(s.split("-", 1)[0]) == int(name)]
    if not hits:
        hits = [p for s, p in stems.items() if s.startswith(name)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise RunError(f"no config matches {name!r} in {CONFIG_DIR} "
                       f"(have: {', '.join(sorted(stems))})")
    raise RunError(f"{name!r} is ambiguous: {', '.join(os.path.basename(h) for h in hits)}")


def load_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: {e}") from None
    validate_config(cfg, path)
    return cfg


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


def run_dir_name(cfg: dict, scale: str, smoke: bool) -> str:
    return f"{cfg['name']}-{scale}" + ("-smoke" if smoke else "")


def budget_of(cfg: dict, scale: str, budget_minutes: Optional[float], smoke: bool) -> Optional[float]:
    if budget_minutes is not None:
        return budget_minutes if budget_minutes > 0 else None
    if smoke:
        return SMOKE_BUDGET_MINUTES
    return cfg["budget_minutes"].get(scale)


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


# --------------------------------------------------------------------------------------------
# log parsing


def _num(v):
    if isinstance(v, (int, float)):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


def parse_log(lines) -> dict:
    """fairseq --log-format json output -> {"train_inner": [...], "train": [...], "valid": [...],
    "stop_reason": str or None}. train/valid dicts lose their "train_"/"valid_" prefix.

    "wall" is made cumulative training time across --resume: fairseq's wall meter restarts
    in every process, so each process's values are shifted by the training time of the
    checkpoint it loaded (the wall of the last record at or before that update), as fairseq's
    own cumulative_training_time (the budget's clock) is."""
    out = {"train_inner": [], "train": [], "valid": [], "stop_reason": None, "done": False,
           "processes": 0}
    offset = 0.0
    points: List[tuple] = []  # (num_updates, cumulative wall) of the records so far
    for line in lines:
        if line.startswith(SEGMENT_MARK):  # a new fairseq process: fresh unless it loads one
            out["processes"] += 1
            offset = 0.0
            out["stop_reason"], out["done"] = None, False
            continue
        m = LOG_LINE.search(line)
        if m:
            tag = m.group(1)
            try:
                stats = json.loads(m.group(2))
            except ValueError:
                continue
            prefix = tag + "_"
            clean = {}
            for k, v in stats.items():
                if tag != "train_inner" and k.startswith(prefix):
                    k = k[len(prefix):]
                clean[k] = _num(v)
            if isinstance(clean.get("wall"), (int, float)):
                clean["wall"] = round(clean["wall"] + offset, 1) if offset else clean["wall"]
                if isinstance(clean.get("num_updates"), int):
                    points.append((clean["num_updates"], clean["wall"]))
            out[tag].append(clean)
            continue
        m = LOADED.search(line)
        if m:
            updates = int(m.group(1))
            before = [w for u, w in points if u <= updates]
            offset = max(before) if before and updates > 0 else 0.0
            continue
        for text, reason in STOP_REASONS:
            if text in line:
                out["stop_reason"] = reason
        if "fairseq_cli.train | done training in" in line:
            out["done"] = True
    return out


def epoch_rows(parsed: dict) -> List[Dict[str, object]]:
    rows: Dict[int, dict] = {}
    for v in parsed["valid"]:  # the last validation of an epoch wins
        rows.setdefault(int(v["epoch"]), {})["valid"] = v
    for t in parsed["train"]:
        rows.setdefault(int(t["epoch"]), {})["train"] = t
    out = []
    best = None
    for epoch in sorted(rows):
        t, v = rows[epoch].get("train", {}), rows[epoch].get("valid", {})
        row = {c: "" for c in EPOCH_COLUMNS}
        row["epoch"] = epoch
        row["train_loss"] = t.get("loss", "")
        row["train_nll_loss"] = t.get("nll_loss", "")
        row["valid_loss"] = v.get("loss", "")
        row["valid_nll_loss"] = v.get("nll_loss", "")
        if isinstance(v.get("loss"), (int, float)):
            best = v["loss"] if best is None else min(best, v["loss"])
        if isinstance(v.get("best_loss"), (int, float)):  # fairseq's own, across a resume too
            best = v["best_loss"] if best is None else min(best, v["best_loss"])
        row["best_valid_loss"] = "" if best is None else best
        row["wall_seconds"] = t.get("wall", "")
        row["updates"] = t.get("num_updates", v.get("num_updates", ""))
        for k in NFE_KEYS:
            row[f"train_{k}"] = t.get(k, "")
            row[f"valid_{k}"] = v.get(k, "")
        node = any(k in t or k in v for k in NFE_KEYS)
        row["node_skipped"] = t.get("node_skipped", 0 if node and t else "")
        row["valid_node_skipped"] = v.get("node_skipped", 0 if node and v else "")
        for k in POLICY_COUNTERS:
            row[k] = t.get(k, 0 if node and t else "")
        for k in PENALTY_KEYS:
            row[f"train_{k}"] = t.get(k, "")
        row["train_wps"] = t.get("wps", "")
        out.append(row)
    return out


def write_epochs_csv(path: str, rows: List[dict]) -> None:
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=EPOCH_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)


def nfe_stats(records: List[dict]) -> Dict[str, dict]:
    stats = {}
    for k in NFE_KEYS:
        vals = [r[k] for r in records if isinstance(r.get(k), (int, float))]
        if vals:
            stats[k] = {"mean": round(sum(vals) / len(vals), 3), "max": max(vals), "n": len(vals)}
    return stats


def throughput(records: List[dict]) -> Optional[float]:
    """Target tokens per second of training: fairseq's wps, averaged over logging intervals."""
    vals = [r["wps"] for r in records if isinstance(r.get("wps"), (int, float))]
    return round(sum(vals) / len(vals), 1) if vals else None


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
    skipped = sum(r.get("node_skipped", 0) for r in parsed["train"]
                  if isinstance(r.get("node_skipped"), (int, float)))
    ckpt = os.path.join(run_dir, "checkpoints", "checkpoint_best.pt")
    cuda = [r["cuda_peak_mb"] for r in parsed["train_inner"]
            if isinstance(r.get("cuda_peak_mb"), (int, float))]
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
        "node_skipped": skipped,
        **{k: sum(r.get(k, 0) for r in parsed["train"] if isinstance(r.get(k), (int, float)))
           for k in POLICY_COUNTERS},
        "tokens_per_second": throughput(parsed["train_inner"]),
        "peak_rss_mb": peak_rss_mb(),
        "cuda_peak_mb": max(cuda) if cuda else None,
        "checkpoint_best": ckpt if os.path.exists(ckpt) else None,
        "study": cfg["study"],
        "data_bin": os.path.abspath(data_bin),
        "language_pair": list(pair),
        "command": cmd,
        "command_line": " ".join(shlex.quote(c) for c in cmd),
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
    with open(os.path.join(run_dir, "summary.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    os.replace(os.path.join(run_dir, "summary.json.tmp"), os.path.join(run_dir, "summary.json"))
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


def main(argv=None) -> int:
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
    a = p.parse_args(argv)

    try:
        cfg = load_config(find_config(a.name))
        if not os.path.isdir(a.data_bin):
            raise RunError(f"{a.data_bin}: data-bin directory not found")
        pair = resolve_pair(a.data_bin, a.source_lang, a.target_lang)
        if a.run_name is not None and (not a.run_name or os.sep in a.run_name or a.run_name.startswith(".")):
            raise RunError(f"--run-name {a.run_name!r}: must be a plain directory name")
        run_dir = os.path.abspath(os.path.join(a.out, a.run_name or run_dir_name(cfg, a.scale, a.smoke)))
        budget = budget_of(cfg, a.scale, a.budget_minutes, a.smoke)
        cmd = build_command(cfg, a.scale, a.data_bin, run_dir, budget, a.smoke, a.extra,
                            a.source_lang, a.target_lang)
        if a.dry_run:
            print(" ".join(shlex.quote(c) for c in cmd))
            return 0
        if os.path.exists(run_dir) and os.listdir(run_dir):
            if a.force:
                shutil.rmtree(run_dir)
            elif not a.resume:
                raise RunError(f"{run_dir} exists: --resume to continue it from its "
                               "checkpoint_last.pt, or --force to start over")
            else:
                check_resumable(run_dir, cfg["name"], a.scale, a.smoke)
    except RunError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2

    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(run_dir, RUN_FILE), "w", encoding="utf-8") as f:
        json.dump(run_identity(cfg["name"], a.scale, a.smoke), f, indent=1)
    hard_limit = budget * 60 * 1.25 + 180 if budget else None
    print(f"{PROG}: {cfg['name']} ({a.scale}{', smoke' if a.smoke else ''}) -> {run_dir}; "
          f"budget {f'{budget:g} min' if budget else 'none'}", file=sys.stderr)
    rc, fired, wall = None, False, 0.0
    start = time.time()
    try:
        rc, fired, wall = run_fairseq(cmd, os.path.join(run_dir, "train.log"), hard_limit,
                                      a.quiet, append=a.resume)
    except KeyboardInterrupt:
        wall = time.time() - start
        finish(run_dir, cfg, a.scale, a.smoke, cmd, None, wall, budget, False, a.data_bin, pair)
        print(f"{PROG}: interrupted; partial epochs.csv and summary.json in {run_dir}", file=sys.stderr)
        print(f"{PROG}: next: {next_command(a, run_dir, ok=False)}", file=sys.stderr)
        return 130
    summary = finish(run_dir, cfg, a.scale, a.smoke, cmd, rc, wall, budget, fired, a.data_bin, pair)
    print(f"{PROG}: {summary['status']} ({summary['stop_reason']}): best valid loss "
          f"{summary['best_valid_loss']} after {summary['updates']} updates, "
          f"{summary['epochs']} epochs, {summary['wall_seconds']}s -> {run_dir}", file=sys.stderr)
    print(f"{PROG}: next: {next_command(a, run_dir, ok=rc == 0 and not fired)}", file=sys.stderr)
    if fired:
        return 124
    return rc


if __name__ == "__main__":
    sys.exit(main())
