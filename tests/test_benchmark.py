"""scripts/benchmark.py: the side-by-side table, its verdict, and the memory probes."""

import json
import os
import subprocess
import sys

import pytest

from experiments import benchmark as bm
from experiments.configs import ROOT

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def epochs(*pairs):
    return [{"epoch": str(i + 1), "valid_loss": str(loss), "wall_seconds": str(wall)}
            for i, (loss, wall) in enumerate(pairs)]


def summary(best, wps, nfe=None, rss=500.0, cuda=None):
    return {"best_valid_loss": best, "tokens_per_second": wps, "peak_rss_mb": rss,
            "cuda_peak_mb": cuda, "updates": 10, "epochs": 2, "stop_reason": "budget",
            "node_skipped": 0, "command_line": "x",
            "nfe_train_inner": {k: {"mean": v} for k, v in (nfe or {}).items()}}


def test_seconds_to_loss_is_the_first_validation_at_or_below_the_target():
    rows = epochs((6.0, 100), (5.0, 200), (4.5, 300), (4.4, 400))
    assert bm.seconds_to_loss(rows, 5.0) == 200
    assert bm.seconds_to_loss(rows, 4.45) == 400
    assert bm.seconds_to_loss(rows, 4.0) is None
    assert bm.seconds_to_loss(epochs(("", 50), (3.0, 90)), 3.5) == 90


def test_node_budget_is_the_factor_times_the_classics_time_to_its_best():
    classic = epochs((6.0, 100), (5.0, 200), (5.2, 300))
    assert bm.node_budget_minutes(classic, 5.0, 3.0, 10.0) == pytest.approx(10.0)  # 3 x 200 s
    assert bm.node_budget_minutes([], None, 3.0, 10.0) == pytest.approx(30.0)  # no validation


def test_rows_and_verdict():
    classic = bm.row_of("classic-1layer", summary(5.0, 1000.0), epochs((6, 100), (5.0, 200)), 5.0)
    assert classic["seconds_to_classic_loss"] == 200 and classic["nfe_forward"] is None
    fast = bm.row_of("project-best", summary(4.9, 600.0, {"nfe_enc_fwd": 2, "nfe_dec_fwd": 2}),
                     epochs((7, 150), (5.5, 300), (4.9, 550)), 5.0)
    assert fast["nfe_forward"] == 4 and fast["nfe_backward"] is None
    assert fast["seconds_to_classic_loss"] == 550
    slow = bm.row_of("study-best", summary(5.2, 200.0, {"nfe_dec_fwd": 14, "nfe_dec_bwd": 30}, cuda=900.0),
                     epochs((9, 600), (5.2, 1200)), 5.0)
    assert slow["peak_memory_mb"] == 900.0 and slow["peak_memory_kind"] == "cuda_max_allocated"
    assert slow["nfe_backward"] == 30 and slow["seconds_to_classic_loss"] is None
    v = bm.verdict([classic, fast, slow])
    assert v["project-best"] == {"time_ratio_to_classic_loss": 2.75, "tokens_per_second_ratio": 0.6,
                                 "goal_met": True}
    assert v["study-best"]["goal_met"] is False and v["study-best"]["time_ratio_to_classic_loss"] is None
    late = bm.row_of("x", summary(4.0, 500.0), epochs((5.0, 700), (4.0, 900)), 5.0)
    assert bm.verdict([classic, late])["x"]["goal_met"] is False  # 3.5 x the classic's time
    table = bm.markdown({"configurations": [classic, fast, slow], "verdict": v, "memory_vs_nfe": [
        {"backprop": "direct", "tol": 1e-3, "nfe_forward": 40, "nfe_backward": 0, "step_peak_mb": 600.0}]})
    assert "| project-best | 4.9 | 550 | 2.75 | 600 | 4 | - |" in table
    assert "Training budgets" not in table
    budgets = bm.markdown({"configurations": [classic], "verdict": {}, "memory_vs_nfe": [],
                           "budget_minutes": 10, "node_budget_minutes": 10.0, "node_budget_factor": 3})
    assert budgets.startswith("Training budgets: classic 10 min; each NODE configuration 10 min (3 x")
    assert "| classic-1layer | 5 | 200 | 1 |" in table and "| direct | 0.001 | 40 | 0 | 600 |" in table


def test_render_prints_tables_and_draws_the_memory_figure(tmp_path):
    doc = {"configurations": [bm.row_of("classic-1layer", summary(5.0, 1000.0), epochs((5.0, 200)), 5.0)],
           "verdict": {}, "memory_vs_nfe": [
               {"backprop": b, "tol": t, "nfe_forward": n, "nfe_backward": nb, "step_peak_mb": mb}
               for b, t, n, nb, mb in (("adjoint", 1e-2, 20, 40, 150.0), ("adjoint", 1e-3, 40, 80, 152.0),
                                       ("direct", 1e-2, 20, 0, 300.0), ("direct", 1e-3, 40, 0, 600.0))]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    png = tmp_path / "memory.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--render",
                           str(path), "--figure", str(png)], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| classic-1layer | 5 | 200 | 1 |" in proc.stdout and "| adjoint | 0.01 | 20 | 40 | 150 |" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_probe_measures_one_step_in_a_fresh_process():
    rows = {}
    for backprop in ("adjoint", "direct"):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                               "--memory-probe", backprop, "1e-3", "--smoke"],
                              capture_output=True, text=True, timeout=300, env=ENV)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows[backprop] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rows["adjoint"]["nfe_forward"] == rows["direct"]["nfe_forward"] > 0
    assert rows["adjoint"]["nfe_backward"] > 0 and rows["direct"]["nfe_backward"] == 0
    for r in rows.values():
        assert r["step_peak_mb"] is None or r["step_peak_mb"] >= 0


def test_bad_arguments_are_named(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                           "--data-bin", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and "--data-bin" in proc.stderr


@pytest.mark.slow
def test_smoke_benchmark_writes_the_json(tmp_path):
    data_bin = os.path.join(ROOT, "data-bin", "multi30k_en_de")
    if not os.path.isdir(data_bin):
        pytest.skip("needs data-bin/multi30k_en_de (scripts/prepare_multi30k.py)")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                           "--data-bin", data_bin, "--out", str(tmp_path / "runs"), "--smoke",
                           "--budget-minutes", "0.5", "--json", str(out)],
                          capture_output=True, text=True, timeout=1800, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    names = [c["name"] for c in doc["configurations"]]
    assert names == list(bm.CONFIGS)
    for c in doc["configurations"]:
        for key in ("best_valid_loss", "seconds_to_classic_loss", "tokens_per_second",
                    "nfe_forward", "nfe_backward", "peak_memory_mb"):
            assert key in c
        assert c["best_valid_loss"] is not None and c["tokens_per_second"] > 0
        assert c["run"] == c["name"] and c["seed"] == 1  # no --seeds: OUT/NAME, the configs' seed
        assert list(c["best_valid_loss_at_minutes"]) == ["5", "10", "15", "20", "30"] and c["valid_curve"]
        assert "busy" in c and "load" in c and "load_before" in c
    assert doc["seeds"] is None and doc["verdict_by_seed"] is None
    assert len(doc["memory_vs_nfe"]) == 2 * len(bm.TOLERANCES)
    assert doc["node_budget_minutes"] > 0 and doc["node_budget_factor"] == bm.GOAL_TIME_RATIO


def test_best_valid_loss_at_equal_training_times():
    rows = epochs((6.0, 250), (5.0, 590), (5.2, 900), (4.8, 1250))  # 20.8 minutes of training
    assert bm.best_loss_by(rows, (5, 10, 15, 20, 30)) == {"5": 6.0, "10": 5.0, "15": 5.0, "20": 5.0, "30": None}
    # nothing validated by 4 min; at 21 min the run had stopped (after 1250 s)
    assert bm.best_loss_by(rows, (4, 20.8, 21)) == {"4": None, "20.8": 5.0, "21": None}
    assert bm.best_loss_by(epochs(("", 200), (5.5, 280), ("", 400)), (5,)) == {"5": 5.5}  # no validation at 400 s
    assert bm.valid_curve(epochs(("", 200), (5.5, 400))) == [[400.0, 5.5]]


def test_seed_of_is_the_last_seed_flag_of_the_command():
    assert bm.seed_of({"command": ["x", "--seed", "1", "--lr", "4e-3", "--seed", "2"]}) == 2
    assert bm.seed_of({"command": ["x"]}) is None and bm.seed_of({}) is None


def with_load(s, other, busy, seed=1):
    s = dict(s, command=["fairseq", "--seed", str(seed)])
    s["load"] = {"other_cpu_cores": other, "other_cpu_cores_max": other, "loadavg_mean": 2.1,
                 "busy": busy, "busy_threshold_cores": 0.1}
    return s


def seeded_doc():
    rows, verdicts = [], {}
    for seed, classic_t, node_t, busy in ((1, 200, 500, False), (2, 300, 1000, True)):
        group = [bm.row_of("classic-1layer", with_load(summary(5.0, 1000.0), 0.02, False, seed),
                           epochs((6, 100), (5.0, classic_t)), 5.0, (5,), f"classic-1layer-seed{seed}"),
                 bm.row_of("project-best", with_load(summary(4.9, 600.0), 0.7 if busy else 0.03, busy, seed),
                           epochs((7, 150), (4.9, node_t)), 5.0, (5,), f"project-best-seed{seed}")]
        rows += group
        verdicts[str(seed)] = bm.verdict(group)
    return {"configurations": rows, "verdict": verdicts["1"], "verdict_by_seed": verdicts,
            "memory_vs_nfe": [], "at_minutes": [5], "budget_minutes": 10, "node_budget_factor": 3,
            "node_budget_minutes": 10.0, "node_budget_minutes_by_seed": {"1": 10.0, "2": 15.0}}


def test_seeds_get_their_own_rows_and_verdicts_and_busy_rows_are_marked():
    doc = seeded_doc()
    assert [r["seed"] for r in doc["configurations"]] == [1, 1, 2, 2]
    assert doc["verdict_by_seed"]["1"]["project-best"]["time_ratio_to_classic_loss"] == 2.5
    assert doc["verdict_by_seed"]["2"]["project-best"]["time_ratio_to_classic_loss"] == 3.33
    text = bm.markdown(doc)
    assert "each NODE configuration 10 min (seed 1), 15 min (seed 2)" in text
    assert "| project-best (seed 1) | 4.9 | 500 | 2.5 |" in text
    assert "| project-best (seed 2) (busy) | 4.9 | 1000 | 3.33 |" in text
    assert "| False | 0.7 | 2.1 |" in text and "| reference | 0.02 | 2.1 |" in text
    assert "(busy): other processes used more than 0.1 of one core" in text
    assert "| configuration | 5 min |" in text and "| classic-1layer (seed 2) | 5 |" in text
    quiet = dict(doc, configurations=doc["configurations"][:2], verdict_by_seed=None,
                 node_budget_minutes_by_seed=None)
    text = bm.markdown(quiet)
    assert "(busy)" not in text and "(seed" not in text
    assert "Machine load: other processes used at most 0.03 of one core" in text


# A benchmark JSON written before the load, equal-time and curve fields existed (the 2026-11-28 run).
OLD_FORMAT = os.path.join(ROOT, "tests", "data", "benchmark_old_format.json")


def test_an_older_benchmark_file_still_renders_with_dashes_for_the_new_fields():
    with open(OLD_FORMAT, encoding="utf-8") as f:
        doc = json.load(f)
    text = bm.markdown(doc)
    for r in doc["configurations"]:
        assert f"| {r['name']} | {r['best_valid_loss']:g} |" in text
    assert "| - | - |" in text and "predates" in text and "(busy)" not in text


def test_the_documented_benchmark_renders_its_equal_time_table():
    with open(os.path.join(ROOT, "docs", "benchmark.json"), encoding="utf-8") as f:
        doc = json.load(f)
    text = bm.markdown(doc)
    for r in doc["configurations"]:
        assert f"| {r['name']} | {r['best_valid_loss']:g} |" in text
    assert "| configuration | 5 min |" in text and "predates" not in text and "(busy)" not in text


def test_render_draws_valid_loss_against_time_for_all_configurations(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(seeded_doc()))
    png = tmp_path / "time.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--render",
                           str(path), "--figure-time", str(png)], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--render",
                          OLD_FORMAT, "--figure-time", str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert old.returncode == 1 and "no valid-loss curves" in old.stderr


@pytest.mark.parametrize("args, named", [
    (["--seeds", "1", "1"], "--seeds"), (["--seeds", "x"], "--seeds"), (["--at-minutes", "0"], "--at-minutes"),
    (["--busy-cores", "-1"], "--busy-cores"), (["--load-interval", "0"], "--load-interval")])
def test_bad_load_and_seed_arguments_are_named(tmp_path, args, named):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                           "--data-bin", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and named in proc.stderr, proc.stderr


@pytest.mark.slow
def test_smoke_benchmark_with_two_seeds_records_load_equal_times_and_the_figure(tmp_path):
    data_bin = os.path.join(ROOT, "data-bin", "multi30k_en_de")
    if not os.path.isdir(data_bin):
        pytest.skip("needs data-bin/multi30k_en_de (scripts/prepare_multi30k.py)")
    out, png = tmp_path / "bench.json", tmp_path / "time.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                           "--data-bin", data_bin, "--out", str(tmp_path / "runs"), "--smoke",
                           "--only", "project-best", "--seeds", "1", "2", "--skip-memory",
                           "--budget-minutes", "0.2", "--at-minutes", "0.01", "60",
                           "--load-interval", "1", "--quiet-seconds", "0.5",
                           "--json", str(out), "--figure-time", str(png)],
                          capture_output=True, text=True, timeout=1800, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [(c["name"], c["seed"]) for c in doc["configurations"]] == [
        ("classic-1layer", 1), ("project-best", 1), ("classic-1layer", 2), ("project-best", 2)]
    assert set(doc["verdict_by_seed"]) == {"1", "2"} and doc["verdict"] == doc["verdict_by_seed"]["1"]
    for c in doc["configurations"]:
        assert (tmp_path / "runs" / c["run"] / "summary.json").exists() and c["run"].endswith(f"-seed{c['seed']}")
        assert c["command_line"].endswith(f"--seed {c['seed']}")
        assert c["valid_curve"] and c["best_valid_loss_at_minutes"]["60"] is None  # ran < 60 min
        assert c["best_valid_loss_at_minutes"]["0.01"] in (None, *[loss for _, loss in c["valid_curve"]])
        if sys.platform.startswith("linux"):
            assert isinstance(c["busy"], bool) and c["load"]["other_cpu_cores"] >= 0
            assert c["load"]["samples"] >= 2 and c["load_before"]["seconds"] > 0
            assert ("WARNING: BUSY MACHINE during " + c["run"] in proc.stderr) == c["busy"]
    assert "Best valid loss at equal wall-clock" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_printed_verdicts_say_when_the_machine_was_busy(capsys):
    bm.print_report(seeded_doc())
    out = capsys.readouterr().out
    assert "project-best (seed 1): time to the classic's best loss = 2.5 x the classic's; throughput 0.6 x; " \
           "goal met: True\n" in out
    assert "project-best (seed 2): time to the classic's best loss = 3.33 x" in out
    assert "goal met: False (BUSY MACHINE: not trustworthy)" in out
    assert "WARNING: BUSY MACHINE during project-best-seed2: other processes used 0.70 cores" in out


def test_a_fixed_node_budget_is_reported_as_equal_time(tmp_path):
    doc = seeded_doc()
    doc.update(node_budget_factor=None, node_budget_minutes=30.0,
               node_budget_minutes_by_seed={"1": 30.0, "2": 30.0})
    assert "each NODE configuration 30 min (seed 1), 30 min (seed 2) (a fixed budget, equal training time)" \
        in bm.markdown(doc)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                           "--data-bin", str(tmp_path), "--node-budget-minutes", "0"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and "--node-budget-minutes must be > 0" in proc.stderr


def test_the_recorded_command_line_names_no_directory_of_the_measuring_machine(tmp_path):
    """The benchmark's rows copy each run's summary.json command_line, which gets committed
    (docs/benchmark*.json): paths inside the repository relative to its root, the
    interpreter as a relative path or ``python``; a path outside the repository is kept."""
    from experiments import runner
    from experiments.configs import USER_DIR

    run_dir = os.path.join(ROOT, "runs", "r")
    cmd = [sys.executable, "-m", "fairseq_cli.train", os.path.join(ROOT, "data-bin", "d"),
           "--user-dir", USER_DIR, "--save-dir", os.path.join(run_dir, "checkpoints"),
           f"--tensorboard-logdir={run_dir}/tb", "--restore-file", str(tmp_path / "c.pt"), "--seed", "1"]
    parsed = {"train": [], "train_inner": [], "valid": []}
    s = runner.summarize({"name": "x", "study": "s"}, "mini", True, parsed, [], cmd, 0, 1.0, None,
                         "max_epoch", str(tmp_path), ("src", "tgt"), run_dir)
    words = s["command_line"].split()
    assert words[1:] == ["-m", "fairseq_cli.train", "data-bin/d", "--user-dir", "node_transformer",
                         "--save-dir", "runs/r/checkpoints", "--tensorboard-logdir=runs/r/tb",
                         "--restore-file", str(tmp_path / "c.pt"), "--seed", "1"]
    assert words[0] == "python" or not os.path.isabs(words[0])


def test_rows_record_the_forward_nfe_of_each_side_per_epoch():
    """nfe_forward_by_epoch (issue 30): each side's mean forward evaluations per training batch
    in each epoch, from the run's epochs.csv; nothing for the classic."""
    rows = [{"train_nfe_enc_fwd": "7", "train_nfe_dec_fwd": "7", "valid_loss": "6", "wall_seconds": "60"},
            {"train_nfe_enc_fwd": "7", "train_nfe_dec_fwd": "9.5", "valid_loss": "5", "wall_seconds": "120"},
            {"train_nfe_enc_fwd": "", "train_nfe_dec_fwd": "", "valid_loss": "", "wall_seconds": ""}]
    row = bm.row_of("adaptive-dopri5-err", summary(5.0, 120.0), rows, 5.0)
    assert row["nfe_forward_by_epoch"] == {"encoder": [7.0, 7.0, None], "decoder": [7.0, 9.5, None]}
    classic = bm.row_of("classic-1layer", summary(5.0, 120.0), epochs((6, 60), (5.0, 120)), 5.0)
    assert classic["nfe_forward_by_epoch"] == {}
