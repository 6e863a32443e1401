"""Small output helpers of the harness: files written whole or not at all, markdown tables."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Iterable, List, Sequence


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
