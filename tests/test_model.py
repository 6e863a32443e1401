"""The NODE-Transformer in-process: gradients, dropout, generation, flags, budgets."""

import argparse
import re

import pytest
import torch
import torch.nn.functional as F
from fairseq.optim.sgd import SGD

from fairseq_helpers import TINY, USER_DIR, VARIANTS, batch, build, cli, set_solver, write_dicts
from node_transformer.dynamics import SolveDropout
from node_transformer.encoder import NODETransformerEncoder
from node_transformer.decoder import NODETransformerDecoder
from node_transformer.config import NodeArgumentError, NodeConfig, parse_ts
from odeint_ext import MaxNFEExceeded

PAIRS = [("w1 w2 w3 w4", "w5 w6 w7"), ("w3 w2", "w8 w9 w10 w11 w4"), ("w7", "w1 w2")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def nll(model, sample):
    out, _ = model(**sample["net_input"])
    lprobs = F.log_softmax(out, dim=-1)
    return F.nll_loss(lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1),
                      ignore_index=1, reduction="sum")


def grads(model, sample, seed):
    model.zero_grad()
    torch.manual_seed(seed)  # same dropout masks in both runs
    nll(model, sample).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_adjoint_gradients_equal_direct_backprop(data_dir, variant):
    # Dropout is on: masks are fixed per solve, so the adjoint backward sees the forward's.
    # GELU, not ReLU: the adjoint re-integrates the state backwards, and ReLU's kinks hold
    # both gradients apart by ~1e-4 even at tolerance 1e-10 (smooth dynamics: ~1e-8).
    task, model, _ = build(data_dir, *VARIANTS[variant], "--node-rtol", "1e-10",
                           "--node-atol", "1e-10", "--node-max-nfe", "0", "--dropout", "0.2",
                           "--activation-fn", "gelu")
    model.train()
    sample = batch(task, PAIRS)
    adjoint = grads(model, sample, seed=3)
    set_solver(model, backprop="direct")
    direct = grads(model, sample, seed=3)
    assert adjoint.keys() == direct.keys()
    enc = [n for n in direct if n.startswith("encoder.") and "embed_tokens" not in n]
    assert enc, "no encoder parameter got a gradient"
    # Some gradients are zero in exact arithmetic (key biases: softmax ignores a shift
    # shared by all keys) and hold rounding noise only: measure those against the model's.
    floor = 1e-6 * max(g.abs().max() for g in direct.values())
    for name in direct:
        scale = direct[name].abs().max().clamp_min(floor)
        err = (adjoint[name] - direct[name]).abs().max() / scale
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
    # The study's code froze the encoder: its gradient through the decoder was None.
    assert all(direct[n].abs().max() > 0 for n in enc)


def test_dropout_masks_fixed_within_a_solve_and_fresh_across_solves():
    x = torch.ones(5, 3, 4)
    drop = SolveDropout(0.5, active=True)
    torch.manual_seed(0)
    first, again = drop("ffn", x), drop("ffn", x * 2)
    assert torch.equal(first * 2, again)
    assert (first == 0).any() and (first == 2).any()
    other = SolveDropout(0.5, active=True)("ffn", x)
    assert not torch.equal(first, other)
    assert torch.equal(SolveDropout(0.5, active=False)("ffn", x), x)


def test_node_sides_use_node_classes_and_others_stay_fairseq(data_dir):
    _, model, _ = build(data_dir, "--node-decoder", "--encoder-layers", "2")
    assert type(model.encoder).__name__ == "TransformerEncoderBase"
    assert len(model.encoder.layers) == 2
    assert isinstance(model.decoder, NODETransformerDecoder) and len(model.decoder.layers) == 1
    _, model, _ = build(data_dir, "--node-encoder")
    assert isinstance(model.encoder, NODETransformerEncoder)
    assert type(model.decoder).__name__ == "TransformerDecoderBase"


def test_augmented_and_time_dependent_shapes(data_dir):
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--node-augment-dims", "2",
                           "--node-time-dependent")
    layer = model.decoder.layers[0]
    assert layer.aug == 2 * 2
    dyn = layer.block.dynamics
    # state 8 + 4 augmented channels; sub-layers see 2 more (t, one per head)
    assert dyn.fc2.out_features == 12 and dyn.fc1.in_features == 14
    assert dyn.encoder_attn.kdim == 12
    out, _ = model(**batch(task, PAIRS)["net_input"])
    assert out.shape[:2] == (3, 6) and torch.isfinite(out).all()


def positional_scores(model, sample, tokens):
    """Log-probabilities of ``tokens`` when the decoder sees the whole prefix at once."""
    prev = torch.cat([tokens.new_tensor([2]), tokens[:-1]]).unsqueeze(0)
    src = sample["net_input"]
    out, _ = model(src["src_tokens"], src["src_lengths"], prev)
    return F.log_softmax(out, dim=-1)[0].gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("solver", [["--node-method", "rk4", "--node-steps", "3"],
                                    ["--node-rtol", "1e-8", "--node-atol", "1e-8",
                                     "--node-max-nfe", "0", "--activation-fn", "gelu"]])
def test_beam_search_equals_recomputing_the_prefix(data_dir, solver):
    task, model, args = build(data_dir, "--node-encoder", "--node-decoder", *solver)
    model.eval()
    args.beam, args.max_len_b, args.max_len_a = 3, 8, 0
    gen = task.build_generator([model], args)
    for i, pair in enumerate(PAIRS):
        sample = batch(task, [pair])
        with torch.no_grad():
            hyps = gen.generate([model], sample)[0]
            assert len(hyps) == 3
            for hyp in hyps:
                ref = positional_scores(model, sample, hyp["tokens"])
                # fairseq's generator keeps scores in float32
                torch.testing.assert_close(hyp["positional_scores"], ref.float(), rtol=0, atol=1e-5)


def check_node_args(args):
    NodeConfig.from_namespace(args).validate()


def ns(**kw):
    args = argparse.Namespace(**kw)
    NodeConfig.set_defaults(args)
    return args


@pytest.mark.parametrize("flags, message", [  # message: a regular expression
    (["--node-separated-decoder"], "--node-separated-decoder requires --node-decoder"),
    (["--node-decoder", "--node-augment-dims", "-1"], "--node-augment-dims must be >= 0, got -1"),
    (["--node-ts", "[1.0, 0.0]"], re.escape("--node-ts must be strictly increasing, got '[1.0, 0.0]'")),
    (["--node-ts", "[0.0, 0.0]"], re.escape("--node-ts must be strictly increasing, got '[0.0, 0.0]'")),
    (["--node-ts", "0"], "--node-ts needs at least two times, got '0'"),
    (["--node-rtol", "0.0"], "--node-rtol must be > 0, got 0.0"),
    (["--node-atol=-1e-3"], "--node-atol must be > 0, got -0.001"),
    (["--node-method", "runge"], "--node-method 'runge' is unknown; choose one of: .*"),
    (["--node-backprop", "both"], "--node-backprop must be adjoint or direct, got 'both'"),
    (["--node-max-nfe", "-5"], r"--node-max-nfe must be >= 0 \(0 = unbounded\), got -5"),
    # accepted before, though they did nothing or lost the gradients
    (["--node-encoder", "--node-method", "dopri5", "--node-steps", "4"],
     "--node-steps applies to fixed-grid methods; --node-method dopri5 chooses its own steps"),
    (["--node-encoder", "--node-method", "rk4", "--node-max-num-steps", "10"],
     r"--node-max-num-steps applies to adaptive methods; --node-method rk4 takes a fixed number "
     r"of steps \(--node-steps\)"),
    (["--node-rtol", "1e-3", "--node-method", "rk4"],
     "--node-rtol, --node-method given without --node-encoder or --node-decoder: no ODE block would use it"),
    (["--node-encoder", "--node-reproduce-frozen-encoder"],
     "--node-reproduce-frozen-encoder requires --node-decoder"),
    (["--node-decoder", "--node-method", "scipy_solver", "--node-backprop", "direct"],
     r"--node-method scipy_solver cannot backpropagate through its steps \(scipy is outside "
     r"autograd\): use --node-backprop adjoint"),
    # budgets that no solve can pass: every batch would be skipped
    (["--node-encoder", "--node-method", "rk4", "--node-steps", "8", "--node-max-nfe", "16"],
     r"--node-max-nfe 16 is below the 32 evaluations every solve with --node-method rk4, "
     r"--node-steps 8 makes: no batch could pass it \(0 = unbounded\)"),
    (["--node-decoder", "--node-max-nfe", "3"],
     r"--node-max-nfe 3 is below the 8 evaluations every solve with --node-method dopri5 makes: .*"),
    (["--node-encoder", "--node-decoding", "recompute"],
     r"--node-decoding recompute requires --node-decoder \(it chooses how a NODE decoder generates\)"),
])
def test_bad_flags_name_the_flag(data_dir, tmp_path, flags, message):
    """What a user sees: fairseq-train stops before training with one line naming the flag."""
    proc = cli("fairseq-train", data_dir, "--user-dir", USER_DIR, "--task", "node_translation",
               "--source-lang", "src", "--target-lang", "tgt", "--arch", "node_transformer", *TINY,
               *flags, "--save-dir", str(tmp_path / "ckpt"),
               "--max-epoch", "1", "--max-tokens", "100", check=False, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines and re.fullmatch("node_transformer: error: " + message, lines[-1]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_bad_flag_stops_build_with_one_line(data_dir):
    with pytest.raises(SystemExit) as e:
        build(data_dir, "--node-encoder", "--node-ts", "[0.0, 1.0, 0.5]")
    msg = str(e.value)
    assert "--node-ts" in msg and "\n" not in msg


def test_parse_ts_forms():
    assert parse_ts("[0.0, 1.0]") == (0.0, 1.0)
    assert parse_ts("0,0.5,1") == (0.0, 0.5, 1.0)
    assert parse_ts("0 2") == (0.0, 2.0)


def crit(task):
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
    return LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_batch_over_budget_is_skipped_counted_and_not_applied(data_dir, phase):
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--node-max-nfe", "0")
    model.train()
    sample = batch(task, PAIRS)
    opt = SGD(argparse.Namespace(lr=[0.1], momentum=0.0, weight_decay=0.0),
              [p for p in model.parameters() if p.requires_grad])
    _, _, log = task.train_step(sample, model, crit(task), opt, update_num=1)
    bwd = log["nfe_enc_bwd"] + log["nfe_dec_bwd"]
    assert max(log["nfe_enc_fwd"], log["nfe_dec_fwd"]) > 0 and bwd > 0
    opt.zero_grad()
    # Budget between the largest forward and backward solve: the forward passes, the
    # backward hits it. Below the forward: the forward hits it.
    fwd_max = max(log["nfe_enc_fwd"], log["nfe_dec_fwd"])
    bwd_max = max(log["nfe_enc_bwd"], log["nfe_dec_bwd"])
    assert bwd_max > fwd_max, "test premise: the backward needs more evaluations"
    budget = fwd_max if phase == "backward" else 2
    set_solver(model, max_nfe=budget)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, sample_size, log = task.train_step(sample, model, crit(task), opt, update_num=2)
    assert log["node_skipped"] == 1 and sample_size == 0 and float(loss) == 0.0
    task.optimizer_step(opt, model, 2)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed by a skipped update"
    # A normal batch afterwards trains again.
    set_solver(model, max_nfe=None)
    _, sample_size, log = task.train_step(sample, model, crit(task), opt, update_num=3)
    assert log["node_skipped"] == 0 and sample_size > 0
    task.optimizer_step(opt, model, 3)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_valid_step_reports_forward_nfe_only(data_dir):
    task, model, _ = build(data_dir, "--node-decoder")
    _, _, log = task.valid_step(batch(task, PAIRS), model, crit(task))
    assert log["nfe_dec_fwd"] > 0 and "nfe_dec_bwd" not in log and "nfe_enc_fwd" not in log


def test_generation_budget_error_is_clear(data_dir):
    task, model, _ = build(data_dir, "--node-encoder", "--node-max-nfe", "8")
    model.eval()
    with torch.no_grad(), pytest.raises(MaxNFEExceeded, match="max_nfe 8"):
        model(**batch(task, PAIRS)["net_input"])


@pytest.mark.parametrize("variant", ["full", "separated"])
def test_prenorm_dynamics_start_as_identity_and_match_direct_gradients(data_dir, variant):
    task, model, _ = build(data_dir, *VARIANTS[variant], "--node-dynamics", "prenorm",
                           "--node-rtol", "1e-10", "--node-atol", "1e-10", "--node-max-nfe", "0",
                           "--activation-fn", "gelu")
    sample = batch(task, PAIRS)
    dec = model.decoder.layers[0]
    h = torch.randn(4, 3, 8, dtype=torch.float64)
    enc = torch.randn(5, 3, 8, dtype=torch.float64)
    f = dec.block.dynamics(torch.tensor(0.0), h, drop=SolveDropout(0.0, False), encoder_out=enc)
    assert torch.equal(f, torch.zeros_like(h)), "zero-initialised output projections: f = 0"
    # Move away from the zero start so that every parameter carries gradient, then compare.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train()
    adjoint = grads(model, sample, seed=1)
    set_solver(model, backprop="direct")
    direct = grads(model, sample, seed=1)
    floor = 1e-6 * max(g.abs().max() for g in direct.values())
    for name in direct:
        err = (adjoint[name] - direct[name]).abs().max() / direct[name].abs().max().clamp_min(floor)
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


def test_prenorm_xavier_output_init_starts_away_from_identity(data_dir):
    task, model, _ = build(data_dir, *VARIANTS["full"], "--node-dynamics", "prenorm",
                           "--node-output-init", "xavier")
    dyn = model.decoder.layers[0].block.dynamics
    for proj in (dyn.fc2, dyn.self_attn.out_proj, dyn.encoder_attn.out_proj):
        assert proj.weight.abs().max() > 0
    dtype = dyn.fc2.weight.dtype
    h = torch.randn(4, 3, 8, dtype=dtype)
    f = dyn(torch.tensor(0.0), h, drop=SolveDropout(0.0, False),
            encoder_out=torch.randn(5, 3, 8, dtype=dtype))
    assert f.abs().max() > 0


@pytest.mark.parametrize("extra, message", [
    (dict(node_output_init="xavier"), "prenorm only"),
    (dict(node_output_init="ones", node_dynamics="prenorm"), "zero or xavier"),
])
def test_output_init_checks(extra, message):
    with pytest.raises(NodeArgumentError, match=message):
        check_node_args(ns(node_decoder=True, **extra))


def test_prenorm_rejects_time_dependence():
    with pytest.raises(NodeArgumentError, match="--node-time-dependent"):
        check_node_args(ns(node_decoder=True, node_dynamics="prenorm", node_time_dependent=True))


def test_reproduced_frozen_encoder_gets_no_gradient_from_the_node_decoder(data_dir):
    task, model, _ = build(data_dir, *VARIANTS["decoder-only"], "--node-reproduce-frozen-encoder")
    model.train()
    g = grads(model, batch(task, PAIRS), seed=0)
    enc = [n for n, _ in model.named_parameters() if n.startswith("encoder.layers.")]
    assert enc and not any(n in g and g[n].abs().max() > 0 for n in enc)
    assert g["decoder.layers.0.block.dynamics.fc1.weight"].abs().max() > 0
