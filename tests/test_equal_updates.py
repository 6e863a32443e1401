"""experiments.equal_updates: commands, the JSON rows, and a short real run on the toy task."""

import json
import os
import subprocess
import sys

import pytest

from experiments import equal_updates as eq
from experiments.configs import ROOT
from fairseq_helpers import cli

ENV = dict(os.environ, OMP_NUM_THREADS="1")
SCRIPT = os.path.join(ROOT, "scripts", "equal_updates.py")


def run(*args, check=True):
    proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          env=ENV, timeout=600, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def test_dry_run_prints_one_command_per_row_and_seed_with_the_same_schedule():
    proc = run("--data-bin", "somewhere", "--dry-run", "--rows", "classic-1layer", "pc",
               "--seeds", "1", "2", "--lr", "pc=1e-3")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        for flag in ("--max-update 2000", "--validate-interval-updates 500", "--max-tokens 4096",
                     "--lr-scheduler inverse_sqrt", "--warmup-updates 400"):
            assert flag in line
    assert "--node-block pc" in lines[1] and "--lr 0.001" in lines[1] and "--seed 1" in lines[1]
    assert "--node-block" not in lines[0] and "--lr 0.004" in lines[0]
    assert "pc-lr0.001-seed2" in lines[3]  # probes at another rate keep their own directory


@pytest.mark.parametrize("args, named", [
    (["--lr", "nope=1"], "--lr takes NAME=LR"),
    (["--updates", "1000", "--every", "300"], "not a multiple of --every"),
    ([], "--data-bin is required"),
])
def test_bad_arguments_are_named(args, named):
    data = [] if named.startswith("--data-bin") else ["--data-bin", "x"]
    proc = run(*data, *args, "--dry-run", check=False)
    assert proc.returncode != 0 and named in proc.stderr


def test_store_keeps_other_keys_and_replaces_the_same_row(tmp_path):
    path = str(tmp_path / "b.json")
    with open(path, "w") as f:
        json.dump({"configurations": [1], eq.JSON_KEY: [{"name": "pc", "seed": 1, "lr": 0.004, "v": 0}]}, f)
    eq.store(path, [{"name": "pc", "seed": 1, "lr": 0.004, "v": 1},
                    {"name": "pc", "seed": 2, "lr": 0.004, "v": 2}], {"command": "x"})
    data = json.load(open(path))
    assert data["configurations"] == [1]
    assert sorted((r["seed"], r["v"]) for r in data[eq.JSON_KEY]) == [(1, 1), (2, 2)]


@pytest.fixture(scope="module")
def toy_bin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    raw, data = tmp / "raw", tmp / "bin"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_toy_data.py"), str(raw),
                    "--train", "200", "--valid", "20", "--test", "5", "--max-len", "6"],
                   check=True, capture_output=True)
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
        "--trainpref", str(raw / "train"), "--validpref", str(raw / "valid"), "--testpref",
        str(raw / "test"), "--destdir", str(data), "--workers", "1", env={"OMP_NUM_THREADS": "1"})
    return data


def test_a_short_run_writes_its_rows_table_and_figure(tmp_path, toy_bin):
    data = toy_bin
    out, js, png = tmp_path / "out", tmp_path / "b.json", tmp_path / "f.png"
    proc = run("--data-bin", str(data), "--out", str(out), "--rows", "classic-1layer", "rk2-gated",
               "--updates", "4", "--every", "2", "--max-tokens", "300", "--json", str(js),
               "--figure", str(png))
    rows = {r["name"]: r for r in json.load(open(js))[eq.JSON_KEY]}
    assert set(rows) == {"classic-1layer", "rk2-gated"}
    for r in rows.values():
        assert set(r["loss_at_updates"]) == {"2", "4"} and r["exit_code"] == 0
        assert all(v > 0 for v in r["loss_at_updates"].values())
        assert {"name", "seed", "params", "f_evals_per_token", "loss_at_updates", "bleu_test2016"} <= set(r)
    # Equal parameters but for the gate (one per side: 2d + 1) and the pre-norm side's final
    # norm (2d per side) that fairseq's post-norm layers do not have.
    d = 128
    assert rows["rk2-gated"]["params"] - rows["classic-1layer"]["params"] == 2 * (2 * d + 1) + 2 * 2 * d
    assert (rows["rk2-gated"]["f_evals_per_token"], rows["classic-1layer"]["f_evals_per_token"]) == (4, 2)
    assert png.stat().st_size > 0 and "rk2-gated" in proc.stdout
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table and run("--render", str(js)).stdout.splitlines() == table
    # NFE per solve in validation, per NODE side (2 for a gated RK2 block); none for the classic
    nfe = rows["rk2-gated"]["valid_nfe_at_updates"]
    assert set(nfe) == {"enc", "dec"} and all(v == {"2": 2, "4": 2} for v in nfe.values())
    assert rows["classic-1layer"]["valid_nfe_at_updates"] == {}


def test_keep_checkpoints_saves_one_every_validation_interval():
    plain = run("--data-bin", "x", "--dry-run", "--rows", "adaptive-dopri5-err-local",
                "--updates", "1000", "--every", "250").stdout
    kept = run("--data-bin", "x", "--dry-run", "--rows", "adaptive-dopri5-err-local",
               "--updates", "1000", "--every", "250", "--keep-checkpoints").stdout
    assert "--save-interval-updates 1000 --keep-interval-updates 1" in plain
    assert "--save-interval-updates 250 --keep-interval-updates -1" in kept
    assert "--node-error-penalty 0.1 --node-error-estimate local" in kept


def test_figure_draws_one_column_per_learning_rate_and_names_a_rate_without_rows(tmp_path):
    js, png = tmp_path / "b.json", tmp_path / "f.png"
    rows = [{"name": n, "seed": 1, "lr": lr, "params": 1, "f_evals_per_token": 2, "bleu_test2016": None,
             "loss_at_updates": {"500": 6.0 + lr, "1000": 5.0 + lr}}
            for n in ("classic-1layer", "rk2-gated") for lr in (0.002, 0.004)]
    js.write_text(json.dumps({eq.JSON_KEY: rows}))
    run("--render", str(js), "--figure", str(png), "--only-lr", "0.004")
    from PIL import Image
    one = Image.open(png).size
    run("--render", str(js), "--figure", str(png))
    assert Image.open(png).size[0] > 1.8 * one[0]  # two columns
    proc = run("--render", str(js), "--figure", str(tmp_path / "g.png"), "--only-lr", "0.5", check=False)
    assert proc.returncode != 0 and "has no rows at learning rate(s) 0.5" in proc.stderr
    proc = run("--render", str(js), "--rows", "pc", check=False)
    assert proc.returncode != 0 and "has no rows named pc" in proc.stderr
    only = run("--render", str(js), "--rows", "rk2-gated").stdout
    assert "rk2-gated" in only and "classic-1layer" not in only


def test_a_longer_run_continues_a_shorter_one_and_keeps_its_log(tmp_path, toy_bin):
    out, js = tmp_path / "out", tmp_path / "b.json"
    common = ["--data-bin", str(toy_bin), "--out", str(out), "--rows", "classic-1layer", "--every", "2",
              "--max-tokens", "300"]
    run(*common, "--updates", "2")
    proc = run(*common, "--updates", "4", "--json", str(js))
    assert "continuing from" in proc.stdout
    log = (out / "classic-1layer-seed1" / "train.log").read_text()
    assert "## resumed from checkpoints/checkpoint_last.pt" in log and "Loaded checkpoint" in log
    (row,) = json.load(open(js))[eq.JSON_KEY]
    assert set(row["loss_at_updates"]) == {"2", "4"}  # the first run's validation is still there
    assert "--max-update 4" in row["command_line"]
    # committed results name no directory of the measuring machine (docs/benchmark.json)
    assert "--user-dir node_transformer" in row["command_line"] and ROOT not in row["command_line"]
    assert json.load(open(js))[eq.JSON_KEY + "_runs"][-1]["command"].split()[0] == "scripts/equal_updates.py"
    collected = run(*common, "--updates", "4", "--collect", "--json", str(js))
    assert collected.returncode == 0
    (again,) = json.load(open(js))[eq.JSON_KEY]
    assert again["loss_at_updates"] == row["loss_at_updates"] and "--max-update 4" in again["command_line"]
    fresh = tmp_path / "fresh.json"
    run(*common[:3], str(tmp_path / "fresh"), *common[4:], "--updates", "4", "--json", str(fresh))
    (one_go,) = json.load(open(fresh))[eq.JSON_KEY]
    assert one_go["loss_at_updates"] == row["loss_at_updates"]  # the continuation is the same run


def test_render_by_seed_sets_the_seeds_side_by_side_and_filters_rates(tmp_path):
    js = tmp_path / "b.json"
    rows = [{"name": "pc", "seed": 2, "lr": 0.004, "params": 1329156, "f_evals_per_token": 6,
             "bleu_test2016": 30.5, "loss_at_updates": {"500": 6.5, "1000": 5.5}},
            {"name": "classic-1layer", "seed": 1, "lr": 0.004, "params": 1328640, "f_evals_per_token": 2,
             "bleu_test2016": None, "loss_at_updates": {"500": 6.1}},
            {"name": "classic-1layer", "seed": 2, "lr": 0.004, "params": 1328640, "f_evals_per_token": 2,
             "bleu_test2016": 31.0, "loss_at_updates": {"500": 6.2, "1000": 5.3}},
            {"name": "pc", "seed": 1, "lr": 0.002, "params": 1329156, "f_evals_per_token": 6,
             "bleu_test2016": None, "loss_at_updates": {"500": 7.0}}]
    js.write_text(json.dumps({eq.JSON_KEY: rows}))
    lines = run("--render", str(js), "--by-seed", "--only-lr", "0.004").stdout.strip().splitlines()
    assert lines[0] == ("| row | params | f/token | lr | loss@500 (s1 / s2) | loss@1000 (s1 / s2) "
                        "| BLEU (s1 / s2) |")
    assert lines[2] == "| `classic-1layer` | 1,328,640 | 2 | 0.004 | 6.1 / 6.2 | - / 5.3 | - / 31.0 |"
    assert lines[3] == "| `pc` | 1,329,156 | 6 | 0.004 | - / 6.5 | - / 5.5 | - / 30.5 |"
    assert len(lines) == 4  # the 0.002 row is left out

    probes = run("--render", str(js), "--by-lr", "500").stdout.strip().splitlines()
    assert probes[0] == "| row | lr 0.002 (s1 / s2) | lr 0.004 (s1 / s2) |"
    assert probes[2:] == ["| `classic-1layer` | - / - | 6.1 / 6.2 |", "| `pc` | 7.0 / - | - / 6.5 |"]
    at_1000 = run("--render", str(js), "--by-lr", "1000").stdout.strip().splitlines()
    assert at_1000[0] == "| row | lr 0.004 (s1 / s2) |"  # no row reached 1000 updates at 0.002
