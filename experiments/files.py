"""Small output helpers of the harness: files written whole or not at all, markdown tables,
commands and paths as results record them."""

from __future__ import annotations

import json
import os
import shlex
from contextlib import contextmanager
from typing import Iterable, List, Sequence

from .configs import ROOT


@contextmanager
def replaced_atomically(path: str, newline=None):
    """Write ``path`` through a temporary file renamed over it at the end: a reader (or a run
    killed half-way) never sees half a file. On an error the old file stays as it was."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline=newline) as f:
        yield f
    os.replace(tmp, path)


def write_json(path: str, data) -> None:
    with replaced_atomically(path) as f:
        json.dump(data, f, indent=1)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], markdown: bool = True) -> List[str]:
    """Lines of a table: markdown (``| a | b |`` under a ``|---|`` rule) or plain ``a | b``."""
    if not markdown:
        return [" | ".join(map(str, r)) for r in [header, *rows]]
    return (["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def repo_relative(path: str) -> str:
    """An absolute path inside the repository, relative to its root; anything else unchanged.
    Results get committed: they must not record the measuring machine's directories."""
    if os.path.isabs(path):
        rel = os.path.relpath(path, ROOT)
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return rel
    return path


def command_line(cmd: Sequence[str]) -> str:
    """A command as the one shell line results record: paths inside the repository relative
    to its root (also in ``--flag=PATH``), an interpreter outside it as ``python``."""
    words = []
    for i, word in enumerate(cmd):
        flag, eq, value = word.partition("=")
        word = flag + eq + repo_relative(value) if eq and word.startswith("-") else repo_relative(word)
        if i == 0 and os.path.isabs(word) and os.path.basename(word).startswith("python"):
            word = "python"
        words.append(word)
    return " ".join(shlex.quote(w) for w in words)


def utc_now() -> str:
    """The time results record: UTC, to the second."""
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine_record() -> dict:
    """What a result needs to say about the machine it ran on (torch imported only here: the
    harness's other tools run without it)."""
    import platform

    import torch
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg()}


def pyplot():
    """matplotlib's pyplot without a display, its debug lines kept out of fairseq's verbose root
    logger."""
    import logging

    import matplotlib
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
