"""One checkpoint at several depths (experiments.analysis.depth_budgets, issue 38 item 3) on
the toy task: a NODE model's points are the solver ladder's rungs, a LayerDrop classic's are
the models fairseq-validate loads with --model-overrides layers_to_keep, and the unpruned
LayerDrop classic is the same point as that checkpoint evaluated as a classic."""

import json
import os
import re
import subprocess
import sys

import pytest

from fairseq_helpers import ROOT, SIZES, USER_DIR, cli, toy_data_bin, train_argv
from experiments.analysis import depth_budgets as db

ENV = {"OMP_NUM_THREADS": "1"}
MIDPOINT = ["--node-encoder", "--node-decoder", "--node-dynamics", "prenorm", "--node-output-init",
            "xavier", "--node-method", "midpoint", "--node-steps", "1", "--node-backprop", "direct"]
LAYERDROP = ["--encoder-layers", "4", "--decoder-layers", "4", "--encoder-layerdrop", "0.5",
             "--decoder-layerdrop", "0.5"]
SCRIPT = os.path.join(ROOT, "scripts", "depth_budgets.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, **ENV))


@pytest.fixture(scope="module")
def budgets(tmp_path_factory):
    root = tmp_path_factory.mktemp("budgets")
    data, raw = toy_data_bin(root, 300, 20, 21, env=ENV)
    ckpts = {}
    for name, flags, epochs in (("node", MIDPOINT, 6), ("layerdrop", LAYERDROP, 6)):
        save = str(root / name / "checkpoints")
        cli("fairseq-train", *train_argv(data, save, [*SIZES["tiny"], "--share-all-embeddings"], *flags,
                                         lr=5e-3, max_tokens=400, epochs=epochs), env=ENV)
        ckpts[name] = os.path.join(save, "checkpoint_last.pt")
    out = str(root / "budgets.json")
    proc = run("--data-bin", data, "--node", f"midpoint={ckpts['node']}",
               "--layerdrop", f"ld={ckpts['layerdrop']}", "--classic", f"ld-full={ckpts['layerdrop']}",
               "--node-rungs", "own", "euler-1", "rk4-2", "--keep", "1", "2", "4", "--remove-bpe", "none",
               "--ref", os.path.join(raw, "test.tgt"), "--json", out, "--figure", str(root / "budgets.png"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        result = json.load(f)
    return data, raw, ckpts, root, result, proc.stdout


def model(result, name):
    return next(m for m in result["models"] if m["name"] == name)


def point(result, name, which):
    return next(p for p in model(result, name)["points"] if p["point"] == which)


def test_kept_layers_are_evenly_spaced_from_the_first():
    assert db.kept_layers(4, 1) == "0"
    assert db.kept_layers(4, 2) == "0,2"
    assert db.kept_layers(6, 3) == "0,2,4"
    assert db.kept_layers(4, 4) is None
    with pytest.raises(db.BudgetError, match="cannot keep 5 of 4"):
        db.kept_layers(4, 5)


def test_node_points_are_the_ladders_rungs(budgets):
    result = budgets[4]
    m = model(result, "midpoint")
    assert m["kind"] == "node" and m["own_solver"] == "midpoint, 1 step"
    assert [p["point"] for p in m["points"]] == ["own", "euler-1", "rk4-2"]
    for which, nfe in (("own", 2), ("euler-1", 1), ("rk4-2", 8)):
        p = point(result, "midpoint", which)
        assert (p["nfe_enc"], p["nfe_dec"], p["budget"]) == (nfe, nfe, nfe), p
        assert p["sentences"] == 21 and p["sentences_per_s"] > 0 and 0 <= p["bleu"] <= 100
    # the decoder's evaluations per generated position follow the solver
    assert point(result, "midpoint", "rk4-2")["nfe_dec_per_position"] == 8


def test_pruned_points_are_what_fairseq_validate_loads(budgets):
    data, _, ckpts, _, result, _ = budgets
    m = model(result, "ld")
    assert m["kind"] == "layerdrop" and m["layers"] == {"encoder": 4, "decoder": 4}
    assert m["layerdrop"] == {"encoder": 0.5, "decoder": 0.5}
    assert [(p["point"], p["budget"]) for p in m["points"]] == [("keep-1", 1), ("keep-2", 2), ("keep-4", 4)]
    assert point(result, "ld", "keep-2")["layers_to_keep"] == {
        "encoder_layers_to_keep": "0,2", "decoder_layers_to_keep": "0,2"}
    for which, keep in (("keep-1", "0"), ("keep-2", "0,2")):
        overrides = f"{{'encoder_layers_to_keep': '{keep}', 'decoder_layers_to_keep': '{keep}'}}"
        proc = cli("fairseq-validate", data, "--user-dir", USER_DIR, "--task", "node_translation",
                   "--path", ckpts["layerdrop"], "--max-tokens", "4096", "--model-overrides", overrides, env=ENV)
        loss = float(re.search(r"valid on 'valid' subset \| loss (\d+\.\d+)", proc.stdout + proc.stderr).group(1))
        assert point(result, "ld", which)["valid_loss"] == pytest.approx(loss, abs=6e-4), which
    # pruning changes the model: fewer layers, another loss
    losses = {p["point"]: p["valid_loss"] for p in m["points"]}
    assert len(set(losses.values())) == 3, losses


def test_the_unpruned_layerdrop_model_is_the_classic_point(budgets):
    result = budgets[4]
    full, classic = point(result, "ld", "keep-4"), point(result, "ld-full", "layers-4")
    assert model(result, "ld-full")["kind"] == "classic" and classic["budget"] == 4
    for key in ("valid_loss", "bleu", "sentences"):
        assert full[key] == classic[key], key


def test_table_figure_load_and_render(budgets, tmp_path):
    _, _, _, root, result, stdout = budgets
    assert "| midpoint | node | rk4-2 | 8 |" in stdout and "| ld | layerdrop | keep-1 | 1 |" in stdout
    with open(root / "budgets.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert all("other_cpu_cores" in m["load"] for m in result["models"])
    assert result["models"][0]["checkpoint"].endswith("checkpoint_last.pt")
    merged = str(tmp_path / "merged.json")
    proc = run("--render", str(root / "budgets.json"), str(root / "budgets.json"), "--json", merged,
               "--figure", str(tmp_path / "merged.png"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("| ld | layerdrop | keep-2 | 2 |") == 2
    with open(merged) as f:
        assert len(json.load(f)["models"]) == 2 * len(result["models"])


def test_bad_input_is_named(budgets, tmp_path):
    data, _, ckpts, _, _, _ = budgets
    proc = run("--data-bin", data, "--node", "no-equals-sign")
    assert proc.returncode != 0 and "--node takes NAME=CKPT" in proc.stderr
    proc = run("--data-bin", data, "--classic", f"x={tmp_path / 'missing.pt'}")
    assert proc.returncode != 0 and "checkpoint not found" in proc.stderr
    proc = run("--data-bin", data, "--node", f"x={ckpts['layerdrop']}")
    assert proc.returncode != 0 and "no NODE block" in proc.stderr
    proc = run("--data-bin", data, "--layerdrop", f"x={ckpts['layerdrop']}", "--keep", "5")
    assert proc.returncode != 0 and "cannot keep 5 of 4 layers" in proc.stderr
