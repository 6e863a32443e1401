"""scripts/torchode_probe.py: the batch-first problem it hands torchode is the ODE block's own
(same f, pads held fixed, norms over real positions), and its errors are one line. The
comparison itself needs torchode, an optional package: that test skips without it."""

import importlib
import json
import os
import sys

import pytest
import torch

from fairseq_helpers import ROOT, batch, build, write_dicts
from node_transformer.ode_block import ode_blocks

SCRIPT = os.path.join(ROOT, "scripts", "torchode_probe.py")


def load_script():
    """The module behind scripts/torchode_probe.py."""
    return importlib.import_module("experiments.analysis.torchode_probe")


def test_batch_first_problem_is_the_blocks_ode(tmp_path):
    probe = load_script()
    task, model, _ = build(write_dicts(str(tmp_path)), "--node-encoder", "--node-decoder")
    model.eval()
    sample = batch(task, [("w1 w2 w3 w4 w5", "w2 w3"), ("w4 w5", "w6 w7 w8 w9"), ("w3", "w1")])
    blocks = ode_blocks(model)
    originals = [b.forward for b in blocks]
    with probe.recording(blocks) as calls, torch.no_grad():
        model(**sample["net_input"])
    assert [b.forward for b in blocks] == originals  # restored
    assert len(calls) == 2
    for call in calls:
        block, h0, pad = call["block"], call["h0"], call["padding_mask"]
        assert call["nfe"] == block.solves[-1].nfe_forward > 0
        T, B, C = h0.shape
        f, y0, norm, shared_norm = probe.batch_first_problem(block, h0, pad, call["inputs"])
        assert y0.shape == (B, T * C)
        with torch.no_grad():
            expected = block.dynamics(block.ts[0], h0, **call["inputs"])
            got = f(torch.zeros(B, dtype=h0.dtype), y0).view(B, T, C).transpose(0, 1)
        real = ~pad.t() if pad is not None else torch.ones(T, B, dtype=torch.bool)
        assert torch.allclose(got[real], expected[real])
        assert (got[~real] == 0).all()  # pads held fixed
        x = torch.randn(B, T * C, dtype=h0.dtype)
        xs = x.view(B, T, C).transpose(0, 1)
        for b in range(B):
            own = xs[:, b][real[:, b]]
            assert torch.allclose(norm(x)[b], own.pow(2).mean().sqrt())
        everything = xs[real]
        assert torch.allclose(shared_norm(x), everything.pow(2).mean().sqrt().expand(B))
    # the decoder's batch has pads (targets of 2, 4 and 1 tokens + EOS)
    assert any(c["padding_mask"] is not None and c["padding_mask"].any() for c in calls)


def test_torchode_solves_the_blocks_ode(tmp_path):
    """Tightly solved, torchode's answer to the batch-first problem is the block's ODE's:
    the wiring (layout, masks, inputs) is right, whatever the loose solves then differ by."""
    pytest.importorskip("torchode")
    probe = load_script()
    task, model, _ = build(write_dicts(str(tmp_path)), "--node-encoder", "--node-decoder")
    model.eval()
    sample = batch(task, [("w1 w2 w3 w4 w5", "w2 w3"), ("w4 w5", "w6 w7 w8 w9")])
    with probe.recording(ode_blocks(model)) as calls, torch.no_grad():
        model(**sample["net_input"])
    for call in calls:
        # float64 at 1e-8: over 8 initialisations the two solves differed by at most 5.2e-6
        # (at 1e-6 by up to 3.2e-4, which failed this bound now and then)
        ref = probe.reference(call["block"], call, tol=1e-8)
        tight = probe.solve_torchode(call["block"], call, tol=1e-8)
        assert tight["failed"] == 0
        assert probe.relative_error(tight["final"], ref) < 1e-4
        assert probe.relative_error(call["out"], ref) < 0.2  # the block's own dopri5 at 1e-2


def test_errors_are_one_line(tmp_path, monkeypatch, capsys):
    probe = load_script()
    assert probe.main([str(tmp_path / "none.pt"), "--data-bin", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"torchode_probe: error: {tmp_path / 'none.pt'}: checkpoint not found"
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torchode", None)  # import torchode raises ImportError
    assert probe.main([str(ckpt), "--data-bin", str(tmp_path)]) == 2
    assert "torchode is not installed (pip install torchode)" in capsys.readouterr().err


def test_comparison_on_a_trained_model(tmp_path_factory, tmp_path):
    pytest.importorskip("torchode")
    from toy_model import trained_run

    probe = load_script()
    run_dir, data, _ = trained_run(tmp_path_factory)
    out = tmp_path / "probe.json"
    ckpt = os.path.join(run_dir, "checkpoints", "checkpoint_best.pt")
    assert probe.main([ckpt, "--data-bin", data, "--batches", "2", "--max-tokens", "200",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for side in ("enc", "dec"):
        s = result["summary"][side]
        assert s["method"] == "dopri5" and s["solves"] == 2
        assert s["mean_nfe_torchdiffeq"] > 0 and s["mean_calls_torchode"] > 0
        assert s["torchode_failed_sentences"] == 0
        assert 0 <= s["mean_error_torchdiffeq"] < 1 and 0 <= s["mean_error_torchode"] < 1
        for row in result["rows"][side]:
            assert row["torchode_steps_max"] >= row["torchode_steps_mean"] > 0
