"""RNODE penalties, STEER end times and the adaptive solver's step options."""

import argparse
import math

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.optim.sgd import SGD
from torch import nn

from fairseq_helpers import batch, build, set_solver, write_dicts
from node_transformer.ode_block import ODEBlock, total_penalties
from odeint_ext import SolverSettings
from node_transformer.config import NodeArgumentError, NodeConfig
from node_transformer.regularisers import Regularisation

PAIRS = [("w1 w2 w3 w4", "w5 w6 w7"), ("w3 w2", "w8 w9 w10 w11 w4"), ("w7", "w1 w2")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


class Linear(nn.Module):
    """f(t, h) = a h: K and J have closed forms."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, t, h):
        return self.a * h


TIGHT = SolverSettings(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backprop", ["adjoint", "direct"])
def test_penalties_equal_their_closed_forms_and_get_gradients(backprop):
    a = 0.7
    block = ODEBlock(Linear(a), SolverSettings(rtol=1e-10, atol=1e-10, backprop=backprop),
                     Regularisation(kinetic=1.0, jacobian=1.0)).train()
    torch.manual_seed(0)
    h0 = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    h1 = block(h0)
    torch.manual_seed(1)
    probe = torch.randn_like(h0)  # the block's Hutchinson probe: its first draw after seed 1
    # h = h0 e^{at}: K = a^2 |h0|^2 (e^{2a} - 1) / (2a), J = a^2 |probe|^2 (per position).
    positions = 5 * 3
    kinetic = a ** 2 * h0.detach().pow(2).sum() / positions * (math.exp(2 * a) - 1) / (2 * a)
    jacobian = a ** 2 * probe.pow(2).sum() / positions
    torch.testing.assert_close(h1, h0 * math.exp(a), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(block.penalties["kinetic"], kinetic, rtol=1e-7, atol=0)
    torch.testing.assert_close(block.penalties["jacobian"], jacobian, rtol=1e-7, atol=0)
    (block.penalties["kinetic"] + block.penalties["jacobian"]).backward()
    # dK/da and dJ/da from the closed forms: K = n2 a (e^{2a} - 1) / 2, J = a^2 P.
    n2 = float(h0.detach().pow(2).sum()) / positions
    dk = n2 * ((math.exp(2 * a) - 1) / 2 + a * math.exp(2 * a))
    dj = 2 * a * float(probe.pow(2).sum()) / positions
    assert block.dynamics.a.grad.item() == pytest.approx(dk + dj, rel=1e-6)


def test_no_penalties_in_evaluation_or_without_coefficients():
    h0 = torch.randn(2, 1, 4, dtype=torch.float64)
    block = ODEBlock(Linear(0.5), TIGHT, Regularisation(kinetic=1.0)).eval()
    block(h0)
    assert block.penalties == {}
    block = ODEBlock(Linear(0.5), TIGHT).train()
    block(h0.requires_grad_())
    assert block.penalties == {}


def test_penalised_training_step_adds_and_logs_each_term(data_dir):
    coef_k, coef_j = 0.5, 0.25
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--dropout", "0.0",
                           "--node-kinetic-energy", str(coef_k), "--node-jacobian-norm", str(coef_j))
    model.train()
    opt = SGD(argparse.Namespace(lr=[0.1], momentum=0.0, weight_decay=0.0),
              [p for p in model.parameters() if p.requires_grad])
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    sample = batch(task, PAIRS)
    loss, sample_size, log = task.train_step(sample, model, crit, opt, update_num=1)
    assert log["rnode_kinetic"] > 0 and log["rnode_jacobian"] > 0
    # The loss takes each block's penalty per position times its real positions (source
    # tokens in the encoder, target tokens in the decoder); the log shows it per position.
    enc, dec = model.encoder.layers[0].block, model.decoder.layers[0].block
    src_tokens = int(sample["net_input"]["src_tokens"].ne(task.source_dictionary.pad()).sum())
    assert (float(enc.positions), float(dec.positions)) == (src_tokens, sample["ntokens"]) == (10, 13)
    penalty = 0.0
    for name, coef in (("kinetic", coef_k), ("jacobian", coef_j)):
        assert log["rnode_" + name] == pytest.approx(float(enc.penalties[name] + dec.penalties[name]), rel=1e-12)
        penalty += coef * float(enc.penalties[name] * src_tokens + dec.penalties[name] * sample["ntokens"])
    assert float(loss) == pytest.approx(float(log["loss"]) + penalty, rel=1e-9)
    # Validation: the criterion's loss only.
    _, _, vlog = task.valid_step(batch(task, PAIRS), model, crit)
    assert "rnode_kinetic" not in vlog


def test_kinetic_penalty_gradient_reaches_the_dynamics(data_dir):
    task, model, _ = build(data_dir, "--node-encoder", "--dropout", "0.0", "--node-kinetic-energy", "1")
    model.train()
    model(**batch(task, PAIRS)["net_input"])
    block = model.encoder.layers[0].block
    block.penalties["kinetic"].backward()
    assert block.dynamics.fc2.weight.grad.abs().max() > 0
    assert model.encoder.embed_tokens.weight.grad.abs().max() > 0  # through h0


def test_steer_draws_the_end_time_in_training_only():
    block = ODEBlock(Linear(0.1), SolverSettings(ts=(0.0, 0.5, 1.0)), Regularisation(steer_b=0.25))
    like = torch.zeros(1, dtype=torch.float64)
    torch.manual_seed(0)
    block.train()
    ends = {float(block._times(like)[-1]) for _ in range(50)}
    assert len(ends) == 50 and all(0.75 <= t <= 1.25 for t in ends)
    assert min(ends) < 0.85 and max(ends) > 1.15
    assert all(float(block._times(like)[1]) == 0.5 for _ in range(5))
    block.eval()
    assert block._times(like).tolist() == [0.0, 0.5, 1.0]


def test_steer_on_a_fixed_grid_keeps_the_step_size():
    """STEER on a fixed grid: the step stays span/steps (torchdiffeq's step_size), so an end
    time past the nominal one adds a partial step; training costs more than --node-steps."""
    block = ODEBlock(Linear(0.1), SolverSettings(method="euler", steps=2), Regularisation(steer_b=0.25))
    h = torch.ones(3, dtype=torch.float64)
    torch.manual_seed(0)
    block.train()
    counts = []
    for _ in range(40):
        block.reset_record()
        block(h)
        counts.append(block.nfe_record().nfe_forward)
    assert set(counts) == {2, 3}  # end time in (0.75, 1]: two steps of 0.5; in (1, 1.25]: three
    block.eval()
    block.reset_record()
    block(h)
    assert block.nfe_record().nfe_forward == 2


def test_train_steps_drawn_by_update_in_training_only():
    """Two blocks built apart (two workers) take the same step count in the same update, and
    every listed count occurs; evaluation keeps the solver's own steps."""
    def block():
        return ODEBlock(Linear(0.1), SolverSettings(method="euler", steps=2),
                        Regularisation(train_steps=(1, 2, 4)))
    h = torch.ones(3, dtype=torch.float64)
    a, b = block().train(), block().train()

    def steps(blk, update):
        blk.set_num_updates(update)
        blk(h)
        return blk.solves[-1].nfe_forward  # euler: one evaluation a step

    drawn = [steps(a, u) for u in range(40)]
    assert drawn == [steps(b, u) for u in range(40)] and set(drawn) == {1, 2, 4}
    assert [steps(a, 7) for _ in range(3)] == [drawn[7]] * 3
    a.eval()
    assert {steps(a, u) for u in range(10)} == {2}
    a.train()
    a.solver = SolverSettings(method="midpoint", steps=2)  # replaced after draws: the draw follows
    assert [steps(a, u) for u in range(40)] == [2 * n for n in drawn]


class Stiff(nn.Module):
    def forward(self, t, h):
        return -1000.0 * h


def test_min_step_bounds_the_steps_of_a_stiff_solve():
    h0 = torch.ones(3, dtype=torch.float64)
    free = ODEBlock(Stiff(), SolverSettings(rtol=1e-8, atol=1e-8)).eval()
    free(h0)
    bounded = ODEBlock(Stiff(), SolverSettings(rtol=1e-8, atol=1e-8, min_step=0.1, first_step=0.1)).eval()
    bounded(h0)
    nfe_free, nfe_bounded = free.solves[-1].nfe_forward, bounded.solves[-1].nfe_forward
    # dopri5: 6 evaluations a step, 10 steps of 0.1 (11 when rounding leaves a sliver),
    # plus the first evaluation.
    assert nfe_bounded <= 6 * 11 + 1 < nfe_free


def test_seminorm_flag_reaches_the_solver_and_saves_backward_steps(data_dir):
    torch.manual_seed(0)  # the saving holds for typical, not for every, initialisation
    task, model, _ = build(data_dir, "--node-encoder", "--dropout", "0.0", "--node-rtol", "1e-4",
                           "--node-atol", "1e-4", "--node-max-nfe", "0", "--node-adjoint-seminorm")
    assert model.encoder.layers[0].block.solver.seminorm
    model.train()
    sample = batch(task, PAIRS)

    def backward_nfe():
        model.zero_grad()
        model(**sample["net_input"])[0].sum().backward()
        return model.encoder.layers[0].block.solves[-1].nfe_backward

    with_seminorm = backward_nfe()
    set_solver(model, seminorm=False)
    assert with_seminorm < backward_nfe()


def check_node_args(args):
    NodeConfig.from_namespace(args).validate()


def ns(**kw):
    args = argparse.Namespace(**kw)
    NodeConfig.set_defaults(args)
    return args


@pytest.mark.parametrize("kw, flag", [
    (dict(node_on_budget="retry"), "--node-on-budget"),
    (dict(node_fallback_steps=0), "--node-fallback-steps"),
    (dict(node_first_step=0.0), "--node-first-step"),
    (dict(node_min_step=-1.0), "--node-min-step"),
    (dict(node_method="rk4", node_min_step=0.1), "--node-min-step"),
    (dict(node_adjoint_seminorm=True, node_backprop="direct"), "--node-adjoint-seminorm"),
    (dict(node_adjoint_seminorm=True, node_method="euler"), "--node-adjoint-seminorm"),
    (dict(node_kinetic_energy=-1.0), "--node-kinetic-energy"),
    (dict(node_jacobian_norm=float("nan")), "--node-jacobian-norm"),
    (dict(node_steer_b=0.5, node_ts="0 0.5 1"), "--node-steer-b"),
    (dict(node_encoder=True, node_method="euler", node_train_steps="0 2"), "--node-train-steps"),
    (dict(node_encoder=True, node_method="euler", node_train_steps="one"), "--node-train-steps"),
    (dict(node_encoder=True, node_train_steps="1 2"), "--node-train-steps applies to fixed-grid"),
    (dict(node_encoder=True, node_block="rk2-gated", node_train_steps="1 2"), "--node-train-steps"),
])
def test_bad_new_flags_name_the_flag(kw, flag):
    with pytest.raises(NodeArgumentError, match=flag):
        check_node_args(ns(**kw))


# -- padding in training ------------------------------------------------------------------------

PENALTIES = {
    "kinetic": ["--node-kinetic-energy", "1"],
    "jacobian": ["--node-jacobian-norm", "1"],
    "steer": ["--node-steer-b", "0.25"],
}


@pytest.mark.parametrize("penalty", sorted(PENALTIES))
def test_padding_changes_no_penalty_step_or_output_in_training(data_dir, penalty, monkeypatch):
    """A sentence alone and the same sentence padded (6 source pads on the left, 5 target pads
    on the right): in training the penalties, the solver's steps (forward and adjoint), the
    outputs and the gradients must not depend on the pads."""
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--dropout", "0.0",
                           "--node-rtol", "1e-3", "--node-atol", "1e-3", *PENALTIES[penalty])
    model.train()
    # The Hutchinson probe is drawn per shape: one fixed vector at every position makes the
    # two runs comparable (not a constant one: the study's dynamics end in a LayerNorm, whose
    # Jacobian maps it to 0).
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.arange(
        x.shape[-1], dtype=x.dtype, device=x.device).sin().expand_as(x).clone())
    pad = task.source_dictionary.pad()
    alone = batch(task, [("w1 w2 w3 w4", "w5 w6 w7")])["net_input"]
    src, prev = alone["src_tokens"], alone["prev_output_tokens"]
    padded = dict(src_tokens=torch.cat([src.new_full((1, 6), pad), src], dim=1),
                  src_lengths=alone["src_lengths"],
                  prev_output_tokens=torch.cat([prev, prev.new_full((1, 5), pad)], dim=1))
    blocks = [b for b in model.modules() if isinstance(b, ODEBlock)]
    runs = []
    for net_input in (alone, padded):
        model.zero_grad()
        torch.manual_seed(3)  # the same STEER end times
        out, _ = model(**net_input)
        out = out[:, :prev.shape[1]]
        penalties = total_penalties(model)
        (out.logsumexp(-1).sum() + sum(penalties.values(), out.new_zeros(()))).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        nfe = [(b.solves[-1].nfe_forward, b.solves[-1].nfe_backward) for b in blocks]
        runs.append((out.detach(), penalties, nfe, grads))
    (out_a, pen_a, nfe_a, grad_a), (out_p, pen_p, nfe_p, grad_p) = runs
    if penalty != "steer":
        assert pen_a.keys() == {"kinetic", "jacobian"} and float(pen_a[penalty]) > 1e-3
    for name in pen_a:
        torch.testing.assert_close(pen_p[name], pen_a[name], rtol=1e-9, atol=0)
    assert nfe_p == nfe_a
    torch.testing.assert_close(out_p, out_a, rtol=0, atol=1e-9)
    assert grad_a.keys() == grad_p.keys()
    for name in grad_a:
        torch.testing.assert_close(grad_p[name], grad_a[name], rtol=1e-7, atol=1e-9, msg=name)


# -- additive over sentences ----------------------------------------------------------------------

def _fixed_probe(x):
    """One Hutchinson probe, the same vector at every position: a sentence gets the same probe
    alone and in a batch (randn_like draws per shape). Not constant: the study's dynamics end
    in a LayerNorm, whose Jacobian maps a constant vector to 0."""
    return torch.arange(x.shape[-1], dtype=x.dtype, device=x.device).sin().expand_as(x).clone()


@pytest.mark.parametrize("sentence_avg", [False, True])
@pytest.mark.parametrize("penalty", ["kinetic", "jacobian"])
def test_penalised_loss_and_gradient_add_up_over_sentences(data_dir, penalty, sentence_avg, monkeypatch):
    """Issue 29 item 5: the training loss of a batch (criterion + penalties, as the task's
    train_step hands it to fairseq's optimizer) and its gradient are the sums of its sentences'
    alone, on a fixed grid with direct backprop (each sentence's trajectory then does not
    depend on its batch). The encoder's penalty was a mean over the batch's source positions
    times its target tokens: batching changed the objective."""
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--dropout", "0.0",
                           "--node-method", "rk4", "--node-steps", "2", "--node-backprop", "direct",
                           *PENALTIES[penalty])
    monkeypatch.setattr(torch, "randn_like", _fixed_probe)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = SGD(argparse.Namespace(lr=[0.1], momentum=0.0, weight_decay=0.0), params)
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=sentence_avg, label_smoothing=0.1)

    def step(pairs):
        opt.zero_grad()
        loss, _, log = task.train_step(batch(task, pairs), model, crit, opt, update_num=1)
        loss = float(loss.detach())
        return loss, loss - float(log["loss"]), [p.grad.clone() for p in params]

    # The criterion's log-softmax is float32 in fairseq, whatever the model's dtype: the
    # losses agree to its rounding, the penalties and gradients to float64's.
    loss, pen, grads = step(PAIRS)
    alone = [step([pair]) for pair in PAIRS]
    assert pen > 1e-2 * loss  # the penalty weighs in the comparison
    assert pen == pytest.approx(sum(a[1] for a in alone), rel=1e-10)
    assert loss == pytest.approx(sum(a[0] for a in alone), rel=1e-7)
    for i, g in enumerate(grads):
        torch.testing.assert_close(g, sum(a[2][i] for a in alone), rtol=1e-8, atol=1e-10)
