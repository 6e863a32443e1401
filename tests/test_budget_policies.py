"""--node-on-budget: what happens to a training batch whose solve exceeds --node-max-nfe."""

import argparse

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.optim.sgd import SGD

from fairseq_helpers import batch, build, set_solver, write_dicts
from node_transformer.ode_block import ODEBlock

PAIRS = [("w1 w2 w3 w4", "w5 w6 w7"), ("w3 w2", "w8 w9 w10 w11 w4"), ("w7", "w1 w2")]
OTHER = [("w9 w8", "w2 w3 w4 w5"), ("w6 w1 w2", "w7")]
FULL = ["--node-encoder", "--node-decoder", "--dropout", "0.0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def setup(data_dir, policy, *flags):
    task, model, _ = build(data_dir, *FULL, "--node-on-budget", policy, *flags)
    torch.manual_seed(0)
    model.train()
    opt = SGD(argparse.Namespace(lr=[0.1], momentum=0.0, weight_decay=0.0),
              [p for p in model.parameters() if p.requires_grad])
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    return task, model, opt, crit


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_error_policy_raises(data_dir):
    task, model, opt, crit = setup(data_dir, "error", "--node-max-nfe", "8")
    with pytest.raises(SystemExit, match="node_transformer: error: .*NFE 9 > max_nfe 8"):
        task.train_step(batch(task, PAIRS), model, crit, opt, update_num=1)


def test_fixed_step_trains_the_batch_with_rk4(data_dir):
    task, model, opt, crit = setup(data_dir, "fixed-step", "--node-max-nfe", "8",
                                   "--node-fallback-steps", "3")
    sample = batch(task, PAIRS)
    loss, sample_size, log = task.train_step(sample, model, crit, opt, update_num=1)
    assert log["node_fixed_step"] == 1 and sample_size == sample["ntokens"] > 0
    # rk4 (3/8 rule: 4 evaluations a step) on 3 steps, plus the failed attempt's 9.
    assert log["nfe_enc_fwd"] == 4 * 3 + 9
    assert all(b.fallback is None for b in model.modules() if isinstance(b, ODEBlock))
    fallback = grads(model)
    # The same gradients as a model that solves with rk4 on 3 steps in the first place.
    opt.zero_grad()
    set_solver(model, method="rk4", steps=3, max_nfe=None)
    _, _, log = task.train_step(sample, model, crit, opt, update_num=1)
    assert log["node_fixed_step"] == 0
    direct = grads(model)
    assert fallback.keys() == direct.keys()
    for n in direct:
        torch.testing.assert_close(fallback[n], direct[n], rtol=1e-9, atol=1e-12)


def test_fixed_step_in_validation(data_dir):
    task, model, _, crit = setup(data_dir, "fixed-step", "--node-max-nfe", "8")
    _, sample_size, log = task.valid_step(batch(task, PAIRS), model, crit)
    assert log["node_fixed_step"] == 1 and sample_size > 0


def test_defer_trains_the_batch_in_the_next_epoch(data_dir):
    task, model, opt, crit = setup(data_dir, "defer", "--node-max-nfe", "8")
    hard, easy = batch(task, PAIRS), batch(task, OTHER)
    before = params(model)
    _, sample_size, log = task.train_step(hard, model, crit, opt, update_num=1)
    assert log["node_deferred"] == 1 and sample_size == 0
    task.optimizer_step(opt, model, 1)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # Still in the same epoch: nothing is replayed yet.
    set_solver(model, max_nfe=None)
    _, sample_size, log = task.train_step(easy, model, crit, opt, update_num=2)
    assert log["node_replayed"] == 0 and sample_size == easy["ntokens"]
    opt.zero_grad()
    task.begin_epoch(2, model)
    _, sample_size, log = task.train_step(easy, model, crit, opt, update_num=3)
    assert log["node_replayed"] == 1
    assert sample_size == easy["ntokens"] + hard["ntokens"]
    assert log["nsentences"] == easy["nsentences"] + hard["nsentences"]
    # Replayed once: the next step trains on its own batch only.
    opt.zero_grad()
    _, sample_size, log = task.train_step(easy, model, crit, opt, update_num=4)
    assert log["node_replayed"] == 0 and sample_size == easy["ntokens"]


def test_deferred_batch_over_budget_again_is_dropped(data_dir, monkeypatch):
    task, model, opt, crit = setup(data_dir, "defer", "--node-max-nfe", "8")
    hard, easy = batch(task, PAIRS), batch(task, OTHER)
    task.train_step(hard, model, crit, opt, update_num=1)
    task.optimizer_step(opt, model, 1)
    task.begin_epoch(2, model)
    set_solver(model, max_nfe=None)
    _, _, log = task.train_step(easy, model, crit, opt, update_num=2)
    assert log["node_replayed"] == 1
    # Deferred once more, and over budget again when replayed (in its backward): easy's
    # gradients alone remain (the replay's backward is undone) and the batch is gone.
    budget = backward_budget(task, model, crit, opt, hard)
    opt.zero_grad()
    task._replay.append((2, hard))  # (epoch deferred in, batch)
    task._live_batches = 0
    real = task._attempt

    def attempt(sample, *args):  # the budget applies to the replayed batch only
        is_hard = torch.equal(sample["net_input"]["src_tokens"], hard["net_input"]["src_tokens"])
        set_solver(model, max_nfe=budget if is_hard else None)
        return real(sample, *args)

    monkeypatch.setattr(task, "_attempt", attempt)
    _, sample_size, log = task.train_step(easy, model, crit, opt, update_num=3)
    monkeypatch.setattr(task, "_attempt", real)
    set_solver(model, max_nfe=None)
    assert log["node_skipped"] == 1 and log["node_replayed"] == 0
    assert sample_size == easy["ntokens"] and not task._replay
    got = grads(model)
    opt.zero_grad()
    task._live_batches = 0
    task.train_step(easy, model, crit, opt, update_num=3)
    only_easy = grads(model)
    for n in only_easy:
        assert torch.equal(got[n], only_easy[n]), n


def backward_budget(task, model, crit, opt, sample):
    """The largest forward NFE of the sample's solves: as a budget, the forward passes and
    (the adjoint needing more evaluations) the backward runs over it."""
    saved = [b.solver for b in model.modules() if isinstance(b, ODEBlock)]
    set_solver(model, max_nfe=None)
    _, _, log = task.train_step(sample, model, crit, opt, update_num=1)
    for b, s in zip((b for b in model.modules() if isinstance(b, ODEBlock)), saved):
        b.solver = s
    fwd = max(log["nfe_enc_fwd"], log["nfe_dec_fwd"])
    assert max(log["nfe_enc_bwd"], log["nfe_dec_bwd"]) > fwd, "premise: the backward needs more"
    return fwd


def test_budget_failure_keeps_earlier_gradients_of_the_update(data_dir):
    # --update-freq 2: the first batch's gradients must survive the second batch's failure
    # in its backward, and the gradients that backward wrote must be gone.
    task, model, opt, crit = setup(data_dir, "skip")
    first, second = batch(task, OTHER), batch(task, PAIRS)
    budget = backward_budget(task, model, crit, opt, second)
    opt.zero_grad()
    task._live_batches = 0
    task.train_step(first, model, crit, opt, update_num=1)
    expected = grads(model)
    set_solver(model, max_nfe=budget)
    _, sample_size, log = task.train_step(second, model, crit, opt, update_num=1)
    assert log["node_skipped"] == 1 and sample_size == 0
    got = grads(model)
    assert got.keys() == expected.keys()
    for n in expected:
        assert torch.equal(got[n], expected[n]), n
    before = params(model)
    task.optimizer_step(opt, model, 1)  # the first batch is still live: a step is taken
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_solver_failures_other_than_the_budget_follow_the_policy(data_dir, phase):
    # torchdiffeq's own guard ("max_num_steps exceeded", an assert) in the forward solve, or
    # inside the adjoint backward (whose options inherit max_num_steps), is skipped like a
    # budget overrun instead of stopping training.
    task, model, opt, crit = setup(data_dir, "skip", "--node-max-nfe", "0")
    sample = batch(task, PAIRS)
    _, _, log = task.train_step(sample, model, crit, opt, update_num=1)
    opt.zero_grad()
    task._live_batches = 0
    # a step is 6 evaluations (dopri5, first-same-as-last); the initial step guess takes 2
    steps = lambda nfe: (nfe - 2) // 6  # noqa: E731
    fwd = max(steps(log["nfe_enc_fwd"]), steps(log["nfe_dec_fwd"]))
    bwd = max(steps(log["nfe_enc_bwd"]), steps(log["nfe_dec_bwd"]))
    assert bwd > fwd >= 1, "premise: the backward takes more steps"
    set_solver(model, max_num_steps=fwd - 1 if phase == "forward" else fwd)
    before = params(model)
    loss, sample_size, log = task.train_step(sample, model, crit, opt, update_num=2)
    assert log["node_skipped"] == 1 and sample_size == 0
    assert (log["nfe_enc_bwd"] + log["nfe_dec_bwd"] > 0) == (phase == "backward")
    assert all(p.grad is None for p in model.parameters())
    task.optimizer_step(opt, model, 2)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_peak_meter_keeps_the_interval_maximum_across_a_checkpoint():
    from fairseq.logging import meters, metrics

    from node_transformer.task import PeakMeter
    with metrics.aggregate(new_root=True) as agg:
        for value in (3.0, 7.0, 5.0):
            metrics.log_custom(PeakMeter, "cuda_peak_mb", value)
        assert agg.get_smoothed_values()["cuda_peak_mb"] == 7
        restored = meters.MetersDict()
        restored.load_state_dict(agg.state_dict())  # what resuming from a checkpoint does
    assert restored.get_smoothed_value("cuda_peak_mb") == 7
