"""experiments/machine_load.py: other processes' CPU time and the busy flag of a benchmark run."""

import os
import subprocess
import sys
import time

import pytest

from experiments import machine_load as ml

linux = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")


def fake_proc(tmp_path, busy_ticks, load, procs):
    """A /proc with a first /proc/stat line, /proc/loadavg and PID/stat files:
    procs = {pid: (ppid, utime, stime, cutime, cstime)}."""
    tmp_path.mkdir(exist_ok=True)
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    (tmp_path / "stat").write_text(f"cpu  {busy_ticks - 6} 1 2 99999 50 1 1 1 0 0\ncpu0 1 2 3\n")
    (tmp_path / "loadavg").write_text(f"{load} 0.50 0.40 1/200 12345\n")
    for pid, (ppid, *t) in procs.items():
        (tmp_path / str(pid)).mkdir(exist_ok=True)
        (tmp_path / str(pid) / "stat").write_text(
            f"{pid} (my (odd) name) S {ppid} 1 1 0 -1 4194304 10 0 0 0 {' '.join(map(str, t))} 20 0 1 0\n")
    return str(tmp_path)


def test_busy_seconds_and_loadavg_read_proc(tmp_path):
    proc = fake_proc(tmp_path, 1000, 1.25, {})
    hz = os.sysconf("SC_CLK_TCK")
    assert ml.busy_seconds(proc) == pytest.approx(1000 / hz)
    assert ml.loadavg(proc) == 1.25


def test_tree_cpu_counts_the_root_and_its_descendants_only(tmp_path):
    hz = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(tmp_path, 0, 0.0, {
        10: (1, 5, 5, 0, 0),       # the benchmark
        11: (10, 100, 20, 7, 3),   # run_experiment.py: its reaped children count through cutime/cstime
        12: (11, 300, 30, 0, 0),   # fairseq
        13: (12, 2, 1, 0, 0),      # a data-loading worker
        20: (1, 500, 500, 0, 0),   # someone else's process
        21: (20, 50, 0, 0, 0),
    })
    assert ml.tree_cpu_seconds(10, proc) == pytest.approx((10 + 130 + 330 + 3) / hz)
    assert ml.tree_cpu_seconds(12, proc) == pytest.approx(333 / hz)
    assert ml.tree_cpu_seconds(99, proc) is None  # no such process


def test_without_proc_the_load_is_unknown(tmp_path):
    missing = str(tmp_path / "no-proc")
    assert ml.busy_seconds(missing) is None and ml.loadavg(missing) is None
    assert ml.tree_cpu_seconds(1, missing) is None
    probe = ml.Probe(root=1, proc=missing)
    assert probe.sample() is None
    with ml.LoadMonitor(interval=0.01, probe=probe) as m:
        time.sleep(0.03)
    assert m.result["busy"] is None and m.result["other_cpu_cores"] is None
    assert "unknown" in ml.describe(m.result)


class Script:
    """A probe replaying samples: (seconds, machine busy CPU seconds, our tree's CPU seconds)."""

    def __init__(self, steps, loads=None):
        self.steps, self.loads, self.i = list(steps), loads, 0

    def sample(self):
        t, busy, own = self.steps[min(self.i, len(self.steps) - 1)]
        load = self.loads[min(self.i, len(self.loads) - 1)] if self.loads else None
        self.i += 1
        return {"t": t, "busy": busy, "own": own, "load": load}


def test_other_processes_cpu_is_the_machines_minus_our_trees():
    # 100 s; the machine was busy 230 CPU s, our training 200: others used 0.3 cores
    samples = [Script([(0, 1000, 50)]).sample(), {"t": 50, "busy": 1110, "own": 150, "load": 2.0},
               {"t": 100, "busy": 1230, "own": 250, "load": 3.0}]
    s = ml.summarise(samples, busy_cores=0.1)
    assert s["other_cpu_cores"] == pytest.approx(0.3)
    assert s["other_cpu_cores_max"] == pytest.approx(0.4)  # the second half: 20 s of 50
    assert s["own_cpu_cores"] == pytest.approx(2.0)
    assert s["loadavg_mean"] == 2.5 and s["loadavg_max"] == 3.0 and s["seconds"] == 100
    assert s["busy"] is True
    assert ml.summarise(samples, busy_cores=0.5)["busy"] is False
    quiet = [{"t": 0, "busy": 0, "own": 0, "load": 2.0}, {"t": 100, "busy": 205, "own": 200, "load": 2.0}]
    assert ml.summarise(quiet)["busy"] is False and ml.summarise(quiet)["other_cpu_cores"] == 0.05
    assert ml.summarise(quiet[:1])["busy"] is None  # one sample: no span, unknown


def test_monitor_samples_in_the_background_until_the_block_ends():
    steps = [(i * 10.0, i * 25.0, i * 20.0) for i in range(1000)]  # 0.5 other cores throughout
    with ml.LoadMonitor(interval=0.01, busy_cores=0.1, probe=Script(steps, [1.0])) as m:
        deadline = time.time() + 5
        while len(m.samples) < 4 and time.time() < deadline:
            time.sleep(0.01)
    assert len(m.samples) >= 5  # the first, at least three from the thread, the last
    assert m.result["samples"] == len(m.samples)
    assert m.result["other_cpu_cores"] == pytest.approx(0.5) and m.result["busy"] is True
    assert "0.50 cores" in ml.describe(m.result)


@linux
def test_a_busy_child_counts_as_ours_not_as_another_process():
    """On this machine: a child burning CPU raises our tree's time by about its CPU time."""
    before = ml.tree_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"])
    time.sleep(0.3)
    during = ml.tree_cpu_seconds()  # the live child, through /proc/PID/stat
    child.wait()
    after = ml.tree_cpu_seconds()  # the reaped child, through our cutime
    assert during is not None and during > before
    assert after - before >= 0.6
    sample = ml.Probe().sample()
    assert sample["busy"] >= after and sample["load"] is not None


def test_a_quiet_check_of_no_time_is_unknown_not_busy():
    s = ml.quiet_check(0, probe=Script([(0, 0, 0), (0.001, 1, 0)]))
    assert s["busy"] is None and s["other_cpu_cores"] is None
    s = ml.quiet_check(0.01, probe=Script([(0, 0, 0), (10, 5, 1)]))
    assert s["other_cpu_cores"] == pytest.approx(0.4) and s["busy"] is True
