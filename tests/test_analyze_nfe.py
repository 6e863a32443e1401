"""scripts/analyze_nfe.py on a tiny trained NODE-Transformer: per-sentence NFE (forward and
adjoint backward), its correlations, the figures and the trajectories."""

import csv
import importlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fairseq_helpers import ROOT, USER_DIR, cli
from toy_model import ENV, trained_run

SCRIPT = os.path.join(ROOT, "scripts", "analyze_nfe.py")
N_VALID = 20  # toy_model's valid split


def load_script():
    """The module behind scripts/analyze_nfe.py."""
    return importlib.import_module("experiments.analysis.analyze_nfe")


def analyze(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **ENV), stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    run_dir, data, _ = trained_run(tmp_path_factory)
    ckpt = os.path.join(run_dir, "checkpoints", "checkpoint_best.pt")
    out = str(tmp_path_factory.mktemp("nfe"))
    proc = analyze(ckpt, "--data-bin", data, "--subset", "valid", "--trajectories", "2",
                   "--points", "5", "--out", out, "--cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt, data, out, proc


def test_one_row_per_sentence_with_forward_and_backward_nfe(analysis):
    _, _, out, proc = analysis
    rows = list(csv.DictReader(open(os.path.join(out, "nfe.csv"))))
    assert [int(r["id"]) for r in rows] == list(range(N_VALID))
    for r in rows:
        assert int(r["src_len"]) >= 2 and int(r["tgt_len"]) >= 2 and float(r["nll_bits"]) > 0
        for col in ("nfe_enc_fwd", "nfe_dec_fwd", "nfe_enc_bwd", "nfe_dec_bwd"):
            assert int(r[col]) > 0, (col, r)
    assert "Spearman vs source length" in proc.stdout


def test_forward_nfe_agrees_with_fairseq_validate_one_sentence_per_batch(analysis):
    ckpt, data, out, _ = analysis
    summary = json.load(open(os.path.join(out, "summary.json")))
    proc = cli("fairseq-validate", data, "--user-dir", USER_DIR, "--task", "node_translation",
               "--path", ckpt, "--valid-subset", "valid", "--batch-size", "1", env=ENV)
    text = proc.stdout + proc.stderr
    for side in ("enc", "dec"):
        m = re.search(rf"nfe_{side}_fwd (\d+(?:\.\d+)?)", text)
        assert m, text[-2000:]
        assert summary["columns"][f"nfe_{side}_fwd"]["mean"] == pytest.approx(float(m.group(1)), abs=0.051)


def test_summary_and_figures(analysis):
    ckpt, _, out, _ = analysis
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["sentences"] == N_VALID and summary["over_budget"] == 0 and summary["backward"]
    assert summary["checkpoint"] == os.path.abspath(ckpt)
    for col, s in summary["columns"].items():
        assert s["min"] <= s["mean"] <= s["max"]
        for key in ("spearman_vs_src_len", "spearman_vs_loss", "spearman_vs_loss_at_fixed_len"):
            assert s[key] is None or -1.0 <= s[key] <= 1.0
    for name in ("nfe_vs_length.png", "nfe_vs_loss.png", "trajectories.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_trajectories_along_ode_time(analysis):
    _, _, out, _ = analysis
    traj = json.load(open(os.path.join(out, "trajectories.json")))
    # 2 sentences (the shortest and the longest source) x (encoder block, decoder block)
    assert sorted((t["block"]) for t in traj) == ["dec block 0", "dec block 0", "enc block 0", "enc block 0"]
    rows = list(csv.DictReader(open(os.path.join(out, "nfe.csv"))))
    lengths = sorted(int(r["src_len"]) for r in rows)
    assert {t["src_len"] for t in traj} == {lengths[0], lengths[-1]}
    for t in traj:
        assert t["t"] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
        assert len(t["h_norm"]) == len(t["f_norm"]) == 5
        assert all(v > 0 and math.isfinite(v) for v in t["h_norm"] + t["f_norm"])
        assert len(set(t["h_norm"])) > 1, "the state does not move along t"


def test_forward_only_and_bad_input(analysis, tmp_path):
    ckpt, data, _, _ = analysis
    proc = analyze(ckpt, "--data-bin", data, "--subset", "valid", "--no-backward",
                   "--max-sentences", "3", "--trajectories", "0", "--out", str(tmp_path / "f"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = open(tmp_path / "f" / "nfe.csv").readline().strip().split(",")
    assert header == ["id", "src_len", "tgt_len", "nll_bits", "nfe_enc_fwd", "nfe_dec_fwd", "over_budget"]
    assert not (tmp_path / "f" / "trajectories.png").exists()
    proc = analyze(str(tmp_path / "missing.pt"), "--data-bin", data)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"analyze_nfe: error: {tmp_path / 'missing.pt'}: checkpoint not found"
    proc = analyze(ckpt, "--data-bin", data, "--points", "1")
    assert proc.returncode == 2 and "--points must be at least 2" in proc.stderr


def test_rank_statistics():
    mod = load_script()
    x = list(range(10))
    assert mod.spearman(x, [v * v for v in x]) == pytest.approx(1.0)
    assert mod.spearman(x, x[::-1]) == pytest.approx(-1.0)
    assert mod.spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(2 / math.sqrt(5))  # ties: mean ranks
    assert mod.spearman([3, 3, 3], [1, 2, 3]) is None  # constant: undefined
    rng = np.random.default_rng(0)
    z = rng.normal(size=3000)
    x, y = z + 0.3 * rng.normal(size=3000), z + 0.3 * rng.normal(size=3000)
    assert mod.spearman(x, y) > 0.8
    assert abs(mod.partial_spearman(x, y, z)) < 0.1  # related only through z
    assert mod.spread_ids([{"id": i, "src_len": n} for i, n in enumerate([5, 2, 9, 4])], 2) == [1, 2]
