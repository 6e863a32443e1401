"""fairseq's --log-format json output of a run (train.log) -> records, epoch rows, NFE statistics."""

from __future__ import annotations

import csv
import json
import re
from typing import Dict, List, Optional

from .files import replaced_atomically
from .names import metric_names as mn

RUNNER = "run_experiment"  # the runner's name in the lines it writes into train.log
NFE_KEYS = mn.NFE_KEYS
POLICY_COUNTERS = mn.POLICY_COUNTERS  # --node-on-budget
PENALTY_KEYS = mn.PENALTY_KEYS
EPOCH_COLUMNS = (
    ["epoch", "train_loss", "valid_loss", "best_valid_loss", "wall_seconds", "updates",
     "train_nll_loss", "valid_nll_loss"]
    + [f"train_{k}" for k in NFE_KEYS] + [f"valid_{k}" for k in NFE_KEYS]
    + [mn.SKIPPED, f"valid_{mn.SKIPPED}"]
    + list(POLICY_COUNTERS) + [f"train_{k}" for k in PENALTY_KEYS]
    + [f"train_{k}" for k in mn.ERROR_KEYS] + ["train_wps"]
)

LOG_LINE = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")
SEGMENT_MARK = f"# {RUNNER}: "  # run_fairseq writes it to train.log at each process start
LOADED = re.compile(r"Loaded checkpoint \S+ \(epoch \d+ @ (\d+) updates\)")
STOP_REASONS = (
    ("Stopping training due to cumulative_training_time", "budget"),
    ("Stopping training due to num_updates", "max_update"),
    ("early stop since valid performance hasn't improved", "patience"),
    ("stopping training because current learning rate", "min_lr"),
)


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
        row[mn.SKIPPED] = t.get(mn.SKIPPED, 0 if node and t else "")
        row[f"valid_{mn.SKIPPED}"] = v.get(mn.SKIPPED, 0 if node and v else "")
        for k in POLICY_COUNTERS:
            row[k] = t.get(k, 0 if node and t else "")
        for k in PENALTY_KEYS + mn.ERROR_KEYS:
            row[f"train_{k}"] = t.get(k, "")
        row["train_wps"] = t.get("wps", "")
        out.append(row)
    return out


def write_epochs_csv(path: str, rows: List[dict]) -> None:
    with replaced_atomically(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=EPOCH_COLUMNS)
        w.writeheader()
        w.writerows(rows)


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
