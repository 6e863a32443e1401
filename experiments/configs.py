"""The study's experiments: configs/*.json, their validation and look-up, run dir names, budgets."""

from __future__ import annotations

import glob
import json
import os
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")
USER_DIR = os.path.join(ROOT, "node_transformer")
SCALES = ("mini", "full")
REQUIRED_KEYS = ("name", "description", "study", "args", "scales", "budget_minutes")
STUDY_KEYS = ("best_valid_loss", "train_hours", "note")
SMOKE_BUDGET_MINUTES = 1.0


class RunError(Exception):
    """Reported as one line, exit status 2."""


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


def run_dir_name(cfg: dict, scale: str, smoke: bool) -> str:
    return f"{cfg['name']}-{scale}" + ("-smoke" if smoke else "")


def budget_of(cfg: dict, scale: str, budget_minutes: Optional[float], smoke: bool) -> Optional[float]:
    if budget_minutes is not None:
        return budget_minutes if budget_minutes > 0 else None
    if smoke:
        return SMOKE_BUDGET_MINUTES
    return cfg["budget_minutes"].get(scale)
