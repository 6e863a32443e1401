"""scripts/time_generation.py: NFE counts over several batches (the task resets its count per batch)."""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, sentences, batch_size):
    out = tmp_path / f"rows-{sentences}-{batch_size}.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "time_generation.py"), "--tiny",
                    "--repeats", "1", "--configs", "classic-1layer", "project-best", "--skip-recompute",
                    "--sentences", str(sentences), "--batch-size", str(batch_size), "--tgt-len", "6",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, cwd=ROOT)
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    return next(r for r in rows if r.get("config") == "project-best")


def test_decoder_nfe_sums_every_batch(tmp_path):
    one = run(tmp_path, 4, 4)
    three = run(tmp_path, 12, 4)
    assert one["nfe_dec_total"] > 0
    # same forced length and solver: three batches make three times one batch's evaluations
    assert three["nfe_dec_total"] == 3 * one["nfe_dec_total"]
    assert three["nfe_dec_per_sentence"] == one["nfe_dec_per_sentence"]
    assert three["nfe_dec_per_step"] == one["nfe_dec_per_step"] == 2.0


def test_fixed_grid_of_an_adaptive_model_trained_with_a_first_step():
    """--fixed-grid replaces the solver of a model whose adaptive settings (here a first step)
    do not apply to a fixed grid: the grid's solver drops them."""
    from experiments.analysis import time_generation as tg
    from node_transformer.ode_block import ODEBlock

    with tempfile.TemporaryDirectory() as d:
        for lang in ("src", "tgt"):
            with open(os.path.join(d, f"dict.{lang}.txt"), "w") as f:
                f.writelines(f"t{i} 1\n" for i in range(20))
        tg.CONFIGS["adaptive-test"] = ("04", ["--node-dynamics", "prenorm", "--node-method", "adaptive_heun",
                                              "--node-first-step", "1.0", "--node-rtol", "0.1", "--node-atol", "0.1"])
        try:
            _, model = tg.build_untrained("adaptive-test", d, tiny=True)
        finally:
            del tg.CONFIGS["adaptive-test"]
    assert tg.modes_of(model, "heun2:5") == ["recompute", "fixed:heun2:5"]
    saved = {}
    tg.set_mode(model, "fixed:heun2:5", saved)
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    assert blocks and all((b.solver.method, b.solver.steps, b.solver.first_step) == ("heun2", 5, None)
                          for b in blocks)
    tg.set_mode(model, "cached", saved)  # back to the model's own solver
    assert all((b.solver.method, b.solver.first_step) == ("adaptive_heun", 1.0) for b in blocks)


def test_modes_of_each_kind_of_decoder():
    """Cached where exact (fixed grid, or the separated decoder), recompute always, and a
    fixed grid offered to every adaptive decoder."""
    from experiments.analysis import time_generation as tg

    with tempfile.TemporaryDirectory() as d:
        for lang in ("src", "tgt"):
            with open(os.path.join(d, f"dict.{lang}.txt"), "w") as f:
                f.writelines(f"t{i} 1\n" for i in range(20))
        modes = {name: tg.modes_of(tg.build_untrained(name, d, tiny=True)[1], "rk4:2")
                 for name in ("classic-1layer", "project-best", "study-best-07", "separated-rk4x2")}
    assert modes == {"classic-1layer": ["classic"], "project-best": ["cached", "recompute"],
                     "study-best-07": ["cached", "recompute", "fixed:rk4:2"],
                     "separated-rk4x2": ["cached", "recompute"]}


def test_first_timed_round_comes_after_an_untimed_warm_up(monkeypatch, tmp_path):
    """--repeats 1 must not time a cold start: every run first generates one batch untimed."""
    from experiments.analysis import time_generation as tg

    calls = []
    real = tg.generate_all

    def recorded(task, model, generator, batches, device):
        calls.append((type(model.decoder).__name__, len(batches)))
        return real(task, model, generator, batches, device)

    monkeypatch.setattr(tg, "generate_all", recorded)
    rows = tg.main(["--tiny", "--repeats", "1", "--configs", "classic-1layer", "project-best",
                    "--skip-recompute", "--sentences", "4", "--batch-size", "2", "--tgt-len", "4",
                    "--threads", "1", "--json", str(tmp_path / "rows.json")])
    assert [r["config"] for r in rows] == ["classic-1layer", "project-best"]
    classic, node = "TransformerDecoderBase", "NODETransformerDecoder"
    assert calls == [(classic, 1), (node, 1), (classic, 2), (node, 2)], calls
