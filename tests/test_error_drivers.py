"""experiments.analysis.error_drivers: the split of an adaptive block's error estimate by stage,
sub-layer and position adds up to the controller's own, and its re-solve is the block's solve."""

import pytest
import torch

from experiments.analysis import error_drivers
from fairseq_helpers import batch, build, write_dicts
from test_decoding import PAIRS

ADAPTIVE = ["--node-encoder", "--node-decoder", "--node-dynamics", "prenorm", "--node-output-init",
            "xavier", "--node-method", "dopri5", "--node-rtol", "1e-4", "--node-atol", "1e-4",
            "--dropout", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_the_shares_add_up_and_the_resolve_is_the_blocks_solve(data_dir, method):
    torch.manual_seed(0)
    task, model, _ = build(data_dir, *ADAPTIVE, "--node-method", method)
    model.eval()
    sample = batch(task, PAIRS)
    with torch.no_grad():
        calls = error_drivers.capture_calls(model, sample)
    for side in error_drivers.SIDES:
        block = calls[side][0][0]
        own_nfe = block.solves[-1].nfe_forward
        with torch.no_grad():
            found = error_drivers.analyse_block(block, [c[1:] for c in calls[side]])
        # The watched re-solve takes the steps the model's own solve took (a tight tolerance:
        # several accepted steps, here with pads held fixed).
        assert found["nfe_per_solve"] == own_nfe
        assert found["accepted_per_solve"] >= 2
        assert sum(found["stage_shares"]) == pytest.approx(1, abs=1e-3)
        assert sum(found["sublayer_shares"].values()) == pytest.approx(1, abs=1e-3)
        assert set(found["sublayer_shares"]) == (
            {"self_attn", "ffn"} if side == "encoder" else {"self_attn", "encoder_attn", "ffn"})
        p = found["position_shares"]
        assert p["first"] + p["last"] + p["rest"] == pytest.approx(1, abs=1e-6)
        assert 0 < p["top1pct"] <= p["top10pct"] <= 1


def test_the_decomposition_is_checked_against_the_controllers_error(data_dir, monkeypatch):
    """analyse_block compares its stage terms with the scaled error the solver's norm saw: a
    wrong tableau row must fail there, not pass silently."""
    torch.manual_seed(0)
    task, model, _ = build(data_dir, *ADAPTIVE)
    model.eval()
    with torch.no_grad():
        calls = error_drivers.capture_calls(model, batch(task, PAIRS))
    real = error_drivers._tableau

    def wrong(method):
        alpha, beta, c_sol, c_error = real(method)
        return alpha, beta, c_sol, c_error * 1.5

    monkeypatch.setattr(error_drivers, "_tableau", wrong)
    block = calls["decoder"][0][0]
    with pytest.raises(AssertionError), torch.no_grad():
        error_drivers.analyse_block(block, [c[1:] for c in calls["decoder"]])
