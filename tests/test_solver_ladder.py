"""The solver ladder (experiments.analysis.solver_ladder, issue 38 item 1) on the toy task: its
rungs run the solvers they name, its losses and BLEU are the ones fairseq-validate and the
project's evaluation (fairseq-generate + sacreBLEU) give for the same solver, and its verdict
follows the gap it reports."""

import json
import os
import re
import subprocess
import sys

import pytest

from fairseq_helpers import ROOT, SIZES, USER_DIR, build, cli, toy_data_bin, train_argv, write_dicts
from experiments.analysis import solver_ladder as sl

ENV = {"OMP_NUM_THREADS": "1"}
MIDPOINT = ["--node-encoder", "--node-decoder", "--node-dynamics", "prenorm", "--node-output-init",
            "xavier", "--node-method", "midpoint", "--node-steps", "1", "--node-backprop", "direct"]
RUNGS = ["own", "euler-1", "rk4-2", "rk4-8", "dopri5-0.0001"]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    data, raw = toy_data_bin(root, 300, 20, 21, env=ENV)
    save = str(root / "run" / "checkpoints")
    cli("fairseq-train", *train_argv(data, save, [*SIZES["tiny"], "--share-all-embeddings"], *MIDPOINT,
                                     lr=5e-3, max_tokens=400, epochs=8), env=ENV)
    ckpt = os.path.join(save, "checkpoint_last.pt")
    out = str(root / "ladder.json")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "solver_ladder.py"), ckpt, "--data-bin", data,
         "--names", "midpoint", "--rungs", *RUNGS, "--bleu-rungs", "own", "rk4-2", "--remove-bpe", "none",
         "--ref", os.path.join(raw, "test.tgt"), "--json", out, "--figure", str(root / "ladder.png"),
         "--hyp-dir", str(root / "hyps")],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, **ENV))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        result = json.load(f)
    return data, raw, ckpt, root, result, proc.stdout


def rung(result, name):
    return next(r for r in result["checkpoints"][0]["rungs"] if r["rung"] == name)


def test_each_rung_runs_its_solver(ladder):
    result = ladder[4]
    res = result["checkpoints"][0]
    assert [r["rung"] for r in res["rungs"]] == RUNGS
    assert res["own_solver"] == "midpoint, 1 step" and res["learned_blocks"] is False
    for name, nfe in (("own", 2), ("euler-1", 1), ("rk4-2", 8), ("rk4-8", 32)):
        r = rung(result, name)
        assert (r["nfe_enc"], r["nfe_dec"]) == (nfe, nfe), r
    assert rung(result, "dopri5-0.0001")["nfe_dec"] > 8
    assert res["checkpoint"].endswith("checkpoint_last.pt")
    with open(ladder[3] / "ladder.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| midpoint |" in ladder[5]  # the table


def test_valid_loss_and_nll_are_fairseq_validates_for_the_same_solver(ladder):
    data, _, ckpt, _, result, _ = ladder
    for name, overrides in (("own", "{}"), ("rk4-2", "{'node_method': 'rk4', 'node_steps': 2}")):
        proc = cli("fairseq-validate", data, "--user-dir", USER_DIR, "--task", "node_translation",
                   "--path", ckpt, "--max-tokens", "4096", "--model-overrides", overrides, env=ENV)
        found = re.search(r"valid on 'valid' subset \| loss (\d+\.\d+) \| nll_loss (\d+\.\d+)",
                          proc.stdout + proc.stderr)
        loss, nll = float(found.group(1)), float(found.group(2))
        assert rung(result, name)["valid_loss"] == pytest.approx(loss, abs=6e-4), name
        assert rung(result, name)["valid_nll"] == pytest.approx(nll, abs=6e-4), name
        assert rung(result, name)["valid_nll"] < rung(result, name)["valid_loss"]  # no smoothing term


def test_bleu_is_the_projects_evaluation(ladder):
    data, raw, ckpt, root, result, _ = ladder
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), str(root / "run"), "--data-bin", data,
         "--checkpoint", ckpt, "--ref", os.path.join(raw, "test.tgt"), "--remove-bpe", "none"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, **ENV))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(root / "run" / "bleu_test.json") as f:
        project = json.load(f)["bleu"]
    own = rung(result, "own")
    with open(root / "run" / "hyp_test.txt") as a, open(root / "hyps" / "midpoint.own.hyp") as b:
        assert a.read() == b.read()  # the same 21 translations, in input order
    assert own["bleu"] == pytest.approx(project, abs=0.01)
    assert own["sentences"] == 21 and own["sentences_per_s"] > 0
    assert own["nfe_dec_per_position"] == 2.0  # one midpoint step per generated position


def test_the_verdict_follows_the_gap(ladder):
    res = ladder[4]["checkpoints"][0]
    fine = [rung(ladder[4], r)["valid_loss"] for r in sl.FINEST]
    assert abs(fine[0] - fine[1]) <= ladder[4]["agree"]
    assert res["converged_loss"] == pytest.approx(sum(fine) / 2, abs=1e-4)
    assert res["gap"] == pytest.approx(rung(ladder[4], "own")["valid_loss"] - res["converged_loss"], abs=1e-4)
    assert res["verdict"] == ("an ODE" if abs(res["gap"]) <= ladder[4]["threshold"] else "a discrete network")


@pytest.mark.parametrize("losses, expected", [
    ({"own": 5.10, "rk4-8": 5.11, "dopri5-0.0001": 5.11}, ("an ODE", -0.01)),
    ({"own": 5.11, "rk4-8": 5.63, "dopri5-0.0001": 5.633}, ("a discrete network", -0.5215)),
    ({"own": 5.11, "rk4-8": 5.63, "dopri5-0.0001": 5.70}, ("not converged", None)),
    ({"own": 5.11, "rk4-8": 5.63}, ("not measured", None)),
])
def test_verdicts(losses, expected):
    rows = {k: {"valid_loss": v} for k, v in losses.items()}
    v = sl.verdict(rows, threshold=0.05, agree=0.01)
    assert (v["verdict"], v["gap"]) == expected


def test_a_learned_block_is_solved_as_its_own_f(tmp_path):
    """rk2-gated: its own rung is the learned step; the others solve its dynamics over its span."""
    import torch
    from node_transformer.ode_block import ODEBlock
    from node_transformer.rk_blocks import LearnedRKBlock
    task, model, _ = build(write_dicts(str(tmp_path)), "--node-encoder", "--node-decoder", "--node-dynamics",
                           "prenorm", "--node-block", "rk2-gated", "--node-ts", "0 2")
    on = sl.OnRung(model)
    assert on.learned and len(on.layers) == 2
    learned = [layer.block for layer in on.layers]
    on.set(sl.RUNGS["rk4-2"])
    for layer, block in zip(on.layers, learned):
        assert isinstance(layer.block, ODEBlock) and layer.block.dynamics is block.dynamics
        assert (layer.block.solver.method, layer.block.solver.steps, layer.block.solver.ts) == ("rk4", 2, (0.0, 2.0))
    on.restore()
    assert all(isinstance(layer.block, LearnedRKBlock) and layer.block is b for layer, b in zip(on.layers, learned))
    assert torch.is_tensor(next(model.parameters()))


def test_render_merges_runs(ladder, tmp_path):
    root, result = ladder[3], ladder[4]
    merged = tmp_path / "merged.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "solver_ladder.py"), "--render", str(root / "ladder.json"),
         str(root / "ladder.json"), "--columns", "own", "rk4-8", "--json", str(merged)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("| midpoint |")]
    own, fine = rung(result, "own"), rung(result, "rk4-8")
    assert len(lines) == 2 and lines[0].count("|") == 5
    assert f"{own['valid_loss']:.3f}" in lines[0] and f"{fine['valid_loss']:.3f}" in lines[0]
    with open(merged) as f:
        data = json.load(f)
    assert len(data["checkpoints"]) == 2 and len(data["runs"]) == 2 and data["runs"][0]["command"]


def test_render_names_pick_the_checkpoints_shown(ladder, tmp_path):
    root = ladder[3]
    script = [sys.executable, os.path.join(ROOT, "scripts", "solver_ladder.py"), "--render", str(root / "ladder.json")]
    proc = subprocess.run([*script, "--names", "midpoint", "--figure", str(tmp_path / "one.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len([l for l in proc.stdout.splitlines() if l.startswith("| midpoint |")]) == 1
    assert (tmp_path / "one.png").stat().st_size > 0
    bad = subprocess.run([*script, "--names", "nosuch"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--names nosuch: not in" in bad.stderr and "midpoint" in bad.stderr
