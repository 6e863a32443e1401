"""Progress of the long scripts, always on stderr (stdout stays parseable).

bar(): a tqdm bar with rate and time left, drawn only on a terminal (in a log file its
carriage returns would be noise). Stages: one line per stage of a long job, terminal or log:
"[3/9] 03-node-full-tol1e-3: 31m elapsed, about 1h 30m left".
"""

from __future__ import annotations

import sys
import time
from typing import List, Optional


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def bar(total: Optional[int] = None, desc: str = "", unit: str = "it"):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with fairseq; without it, no bar
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None,
                leave=False, dynamic_ncols=True)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s:02d}s" if m else f"{s}s"


class Stages:
    """Announces the stages of a job with the time left: from the expected seconds of the
    stages still to run when given (a training budget), else from the mean of those done."""

    def __init__(self, prog: str, names: List[str], expected: Optional[List[Optional[float]]] = None):
        self.prog, self.names = prog, list(names)
        self.expected = list(expected) if expected else [None] * len(self.names)
        self.t0 = time.time()
        self.done: List[float] = []
        self._started: Optional[float] = None

    def left(self, i: int) -> Optional[float]:
        """Seconds left when stage i (0-based) starts."""
        mean = sum(self.done) / len(self.done) if self.done else None
        total = 0.0
        for e in self.expected[i:]:
            e = e if e is not None else mean
            if e is None:
                return None
            total += e
        return total

    def start(self, i: int, what: str = "") -> None:
        if self._started is not None:
            self.done.append(time.time() - self._started)
        self._started = time.time()
        left = self.left(i)
        eta = f", about {duration(left)} left" if left is not None else ""
        print(f"{self.prog}: [{i + 1}/{len(self.names)}] {self.names[i]}{(': ' + what) if what else ''} "
              f"({duration(time.time() - self.t0)} elapsed{eta})", file=sys.stderr, flush=True)

    def finish(self) -> None:
        print(f"{self.prog}: {len(self.names)} stages in {duration(time.time() - self.t0)}",
              file=sys.stderr, flush=True)
