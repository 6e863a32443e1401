"""scripts/experiments/*.sh: one script per study experiment (issue #14), run as users run them."""

import glob
import json
import os
import random
import re
import string
import subprocess
import sys
import time

import pytest

from experiments.configs import ROOT

SHELL_DIR = os.path.join(ROOT, "scripts", "experiments")
CONFIGS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs", "*.json")))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
COUNTS = {"train": 29000, "valid": 1014, "test2016": 1000, "test2017": 1000, "test2018": 1071}


def sh(name, *args, timeout=60, env=None):
    return subprocess.run([os.path.join(SHELL_DIR, name + ".sh"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env or ENV, stdin=subprocess.DEVNULL,
                          cwd=ROOT)


def header(name):
    with open(os.path.join(SHELL_DIR, name + ".sh"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines


def test_one_script_per_config_plus_all():
    have = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(SHELL_DIR, "*.sh")))
    assert len(CONFIGS) == 9
    assert have == sorted(CONFIGS + ["all", "common"])
    for name in CONFIGS + ["all"]:
        path = os.path.join(SHELL_DIR, name + ".sh")
        assert os.access(path, os.X_OK), path
        assert subprocess.run(["bash", "-n", path]).returncode == 0


@pytest.mark.parametrize("name", CONFIGS + ["all"])
def test_script_is_thin_and_names_its_claim(name):
    lines = header(name)
    assert lines[0] == "#!/usr/bin/env bash"
    comments = [line for line in lines[1:] if line.startswith("#")]
    code = [line for line in lines[1:] if line.strip() and not line.startswith("#")]
    assert 2 <= len(comments) <= 3 and all(lines[i].startswith("#") for i in range(1, len(comments) + 1))
    assert re.search(r"[Cc]onclusions? \d", " ".join(comments)), comments
    assert code[0] == "set -euo pipefail" and len(code) == 3  # strict mode, source, one call
    target = "all" if name == "all" else name
    assert code[2].startswith(f"run_study_experiment {target} ") and code[2].endswith('"$@"')


@pytest.mark.parametrize("name", CONFIGS + ["all"])
def test_help(name):
    proc = sh(name, "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"usage: {os.path.join(SHELL_DIR, name + '.sh')} [--scale mini|full]")
    comments = [line[1:].strip() for line in header(name)[1:] if line.startswith("#")]
    for line in comments:  # the claim is the help's description
        assert line in out
    for flag in ("--scale", "--data DIR", "--out DIR", "--smoke", "--dry-run"):
        assert flag in out


def commands(stdout):
    """The command lines of a --dry-run, without their trailing '  # why' notes."""
    return [line.split("  # ")[0] for line in stdout.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_prints_the_five_steps(name, tmp_path):
    data = tmp_path / "multi30k"
    data.mkdir()
    proc = sh(name, "--dry-run", "--data", str(data), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    steps = ["prepare_multi30k.py", "run_experiment.py", "evaluate.py", "plot_results.py",
             "results_table.py"]
    assert [next(s for s in steps if f"scripts/{s}" in c) for c in cmds] == steps, cmds
    prepare, train, score, plot, table = cmds
    assert f"--from {data}" in prepare and "--head" not in prepare
    assert f"run_experiment.py {name} --scale mini" in train and "--resume" not in train
    run_dir = str(tmp_path / "runs" / f"{name}-mini")
    assert f"evaluate.py {run_dir} " in score and "--beam 5" in score
    assert f"plot_results.py {run_dir} " in plot and f"results_table.py {run_dir}" in table
    full = commands(sh(name, "--dry-run", "--scale", "full", "--data", str(data),
                       "--out", str(tmp_path / "runs")).stdout)
    assert f"--scale full" in full[1] and f"{name}-full" in full[2]


def test_all_dry_run_trains_the_nine_in_order(tmp_path):
    proc = sh("all", "--dry-run", "--out", str(tmp_path / "runs"), "--data-bin", str(tmp_path / "bin"),
              "--data", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    trained = [re.search(r"run_experiment\.py (\S+)", c).group(1) for c in commands(proc.stdout)
               if "run_experiment.py" in c]
    assert trained == CONFIGS
    plot = [c for c in commands(proc.stdout) if "plot_results.py" in c]
    assert len(plot) == 1 and all(f"{n}-mini" in plot[0] for n in CONFIGS)


def test_dry_run_resumes_an_unfinished_run_and_keeps_a_finished_one(tmp_path):
    name = "07-separated-aug1-tol1e-2"
    run = tmp_path / "runs" / f"{name}-mini"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config": name, "scale": "mini", "smoke": False}))
    args = ("--dry-run", "--data", str(tmp_path), "--out", str(tmp_path / "runs"))
    train = [c for c in commands(sh(name, *args).stdout) if "run_experiment.py" in c]
    assert len(train) == 1 and train[0].endswith("--resume")
    (run / "summary.json").write_text(json.dumps({"status": "ok", "stop_reason": "budget"}))
    proc = sh(name, *args)
    assert not [c for c in commands(proc.stdout) if "run_experiment.py" in c]
    assert "trained already" in proc.stdout
    forced = [c for c in commands(sh(name, *args, "--force").stdout) if "run_experiment.py" in c]
    assert forced[0].endswith("--force")


@pytest.mark.parametrize("args, message", [
    (["--scale", "huge"], "argument --scale: invalid choice: 'huge'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--data", "/nonexistent/multi30k"], "--data /nonexistent/multi30k: not a directory"),
    (["--smoke", "--data-bin", "/nonexistent/bin"], "--smoke needs --data DIR"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    proc = sh("07-separated-aug1-tol1e-2", *args, "--out", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith(os.path.join(SHELL_DIR, "07-separated-aug1-tol1e-2.sh") + ": error: ")


def test_a_python_without_fairseq_is_named(tmp_path):
    env = dict(ENV, PYTHON="python3", PYTHONPATH="", PATH="/usr/bin:/bin")
    fake = tmp_path / "python3"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # -S: no site-packages
    fake.chmod(0o755)
    env["PATH"] = f"{tmp_path}:/usr/bin:/bin"
    proc = sh("02-transformer-1layer", "--data", str(tmp_path), "--out", str(tmp_path), env=env)
    assert proc.returncode == 2 and "has no fairseq" in proc.stderr and "PYTHON" in proc.stderr


# ---------------------------------------------------------------------------------------------
# smoke: the whole pipeline on a corpus shaped like Multi30k (official line counts)


def write_multi30k_like(path, seed=0):
    rng = random.Random(seed)
    words = {lang: ["".join(rng.choice(string.ascii_lowercase + "äöüß" * (lang == "de"))
                            for _ in range(rng.randint(2, 7))) for _ in range(400)]
             for lang in ("en", "de")}
    os.makedirs(path)
    for split, n in COUNTS.items():
        for lang in ("en", "de"):
            with open(os.path.join(path, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                for i in range(n):
                    r = random.Random(f"{split}{i}")  # the same sentence shape on both sides
                    f.write(" ".join(r.choice(words[lang]) for _ in range(r.randint(3, 12))) + " .\n")
    return path


@pytest.mark.slow  # 1m45s on the shared 2-core machine (prepare 27 s, train 40 s, score 36 s)
def test_smoke_runs_the_pipeline_and_a_rerun_does_nothing(tmp_path):
    data = write_multi30k_like(str(tmp_path / "multi30k"))
    args = ("--smoke", "--data", data, "--data-bin", str(tmp_path / "bin"), "--out", str(tmp_path / "runs"))
    t0 = time.time()
    proc = sh("02-transformer-1layer", *args, timeout=400)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = tmp_path / "runs" / "02-transformer-1layer-mini-smoke"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["smoke"] and summary["scale"] == "mini"
    bleu = json.loads((run / "bleu_test.json").read_text())
    assert bleu["sentences"] == 500 and 0 <= bleu["bleu"] <= 100
    figures = tmp_path / "runs" / "figures-mini-smoke" / "02-transformer-1layer"
    assert (figures / "best_valid_loss_hours.png").is_file()
    assert (figures / "02-transformer-1layer-mini-smoke_loss.png").is_file()
    row = [line for line in proc.stdout.splitlines() if line.startswith("| 02-transformer-1layer-mini-smoke |")]
    assert len(row) == 1 and row[0].rstrip(" |").endswith("| 3.194 | 1.500")  # the study's numbers
    assert "Conclusion 1:" in proc.stdout
    stamp = json.loads((tmp_path / "bin" / "stamp.json").read_text())
    assert stamp["key"]["options"]["head"] == 500 and stamp["lines"]["train.en"] == 500
    print(f"smoke pipeline: {seconds:.0f}s")

    again = sh("02-transformer-1layer", *args, timeout=200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout + again.stderr
    assert "trained already" in again.stderr and "not rescored" in again.stderr
    assert json.loads((run / "summary.json").read_text())["date"] == summary["date"]
