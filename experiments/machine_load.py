"""How busy the machine was while a benchmark configuration trained (Linux /proc; "unknown"
elsewhere).

A ratio of two timings made one after the other is only as good as the machine's quiet
between them: on a 2-core box one other busy process halves a 2-thread training. So the
benchmark samples, before and during each configuration:

- the 1-minute load average (/proc/loadavg; it counts the training's own threads too);
- the CPU time used by every process *outside* the benchmark's own process tree: the
  machine's busy time (/proc/stat's first line: user, nice, system, irq, softirq and steal,
  the time a hypervisor gave to other guests) minus the CPU time of the benchmark process and
  all its descendants (their /proc/PID/stat utime + stime + cutime + cstime: the children
  they have reaped count through cutime/cstime, so a training that ends between two samples
  still counts as ours).

`other_cpu_cores` is that foreign CPU time over the wall time: 0.5 means other processes
kept half of one core busy on average. A configuration is flagged busy when it exceeds
`BUSY_CORES` (default 0.1 of one core) on average over its training.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Dict, List, Optional

BUSY_CORES = 0.1
SAMPLE_SECONDS = 10.0
PROC = "/proc"


def _ticks_per_second() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


def loadavg(proc: str = PROC) -> Optional[float]:
    """The 1-minute load average; None where /proc/loadavg does not exist."""
    try:
        with open(os.path.join(proc, "loadavg"), encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def busy_seconds(proc: str = PROC) -> Optional[float]:
    """CPU seconds the whole machine has been busy since boot, all cores summed (steal
    included: time this guest wanted and another one got)."""
    try:
        with open(os.path.join(proc, "stat"), encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    v = [int(x) for x in fields[1:9]] + [0] * max(0, 9 - len(fields))
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _ticks_per_second()


def _stat_fields(text: str) -> Optional[List[str]]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parens)."""
    end = text.rfind(")")
    return text[end + 2:].split() if end >= 0 else None


def tree_cpu_seconds(root: Optional[int] = None, proc: str = PROC) -> Optional[float]:
    """CPU seconds of process `root` (default: this one) and all its live descendants,
    each with its reaped children's time; None without /proc."""
    root = os.getpid() if root is None else root
    try:
        names = os.listdir(proc)
    except OSError:
        return None
    parent: Dict[int, int] = {}
    cpu: Dict[int, int] = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc, name, "stat"), encoding="ascii", errors="replace") as f:
                fields = _stat_fields(f.read())
        except OSError:  # the process ended meanwhile
            continue
        if not fields or len(fields) < 15:
            continue
        pid = int(name)
        parent[pid] = int(fields[1])
        cpu[pid] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    if root not in cpu:
        return None
    children: Dict[int, List[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / _ticks_per_second()


class Probe:
    """What one sample reads: injectable, so the accounting can be tested without a busy
    machine."""

    def __init__(self, root: Optional[int] = None, proc: str = PROC,
                 clock: Callable[[], float] = time.monotonic):
        self.root, self.proc, self.clock = root, proc, clock

    def sample(self) -> Optional[dict]:
        t, busy, own = self.clock(), busy_seconds(self.proc), tree_cpu_seconds(self.root, self.proc)
        if busy is None or own is None:
            return None
        return {"t": t, "busy": busy, "own": own, "load": loadavg(self.proc)}


def _other_cores(a: dict, b: dict) -> Optional[float]:
    dt = b["t"] - a["t"]
    if dt <= 0:
        return None
    return max(0.0, (b["busy"] - a["busy"]) - (b["own"] - a["own"])) / dt


def summarise(samples: List[dict], busy_cores: float = BUSY_CORES) -> dict:
    """Load figures of a span from its samples (first and last bound it). Unknown (None)
    where fewer than two samples could be read."""
    unknown = {"other_cpu_cores": None, "other_cpu_cores_max": None, "own_cpu_cores": None,
               "loadavg_mean": None, "loadavg_max": None, "seconds": None, "samples": len(samples),
               "busy": None, "busy_threshold_cores": busy_cores}
    if len(samples) < 2:
        return unknown
    first, last = samples[0], samples[-1]
    total = _other_cores(first, last)
    if total is None:
        return unknown
    steps = [c for c in (_other_cores(a, b) for a, b in zip(samples, samples[1:])) if c is not None]
    loads = [s["load"] for s in samples if s.get("load") is not None]
    seconds = last["t"] - first["t"]
    return {
        "other_cpu_cores": round(total, 3),
        "other_cpu_cores_max": round(max(steps), 3) if steps else None,
        "own_cpu_cores": round(max(0.0, last["own"] - first["own"]) / seconds, 3),
        "loadavg_mean": round(sum(loads) / len(loads), 2) if loads else None,
        "loadavg_max": max(loads) if loads else None,
        "seconds": round(seconds, 1),
        "samples": len(samples),
        "busy": total > busy_cores,
        "busy_threshold_cores": busy_cores,
    }


class LoadMonitor:
    """Samples the machine's load every `interval` seconds in a background thread while
    the `with` block runs (and once at each end); `.result` then holds `summarise`'s dict."""

    def __init__(self, interval: float = SAMPLE_SECONDS, busy_cores: float = BUSY_CORES,
                 probe: Optional[Probe] = None):
        self.interval, self.busy_cores = interval, busy_cores
        self.probe = probe or Probe()
        self.samples: List[dict] = []
        self.result: Optional[dict] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _take(self) -> None:
        s = self.probe.sample()
        if s is not None:
            self.samples.append(s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> "LoadMonitor":
        self._take()
        self._thread = threading.Thread(target=self._loop, name="load-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._take()
        self.result = summarise(self.samples, self.busy_cores)


def quiet_check(seconds: float, busy_cores: float = BUSY_CORES, probe: Optional[Probe] = None) -> dict:
    """The machine's load over `seconds` with nothing of ours running: taken before each
    configuration, so that a busy start shows even when the training itself is short."""
    if not seconds > 0:
        return summarise([], busy_cores)  # no check asked for: unknown (a zero span says nothing)
    probe = probe or Probe()
    first = probe.sample()
    time.sleep(seconds)
    last = probe.sample()
    return summarise([s for s in (first, last) if s is not None], busy_cores)


def describe(load: Optional[dict]) -> str:
    """One line for logs: other processes' CPU and the load average, or why unknown."""
    if not load or load.get("other_cpu_cores") is None:
        return "machine load unknown (no /proc)"
    return (f"other processes {load['other_cpu_cores']:.2f} cores (max {load['other_cpu_cores_max']}), "
            f"load average {load['loadavg_mean']}")
