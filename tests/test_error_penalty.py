"""--node-error-penalty / --node-error-estimate (issue 30 item 2): the solver's own error
estimate in the training loss, per token, logged per side; refused where it cannot work."""

import argparse
import math
import os
import re
import subprocess

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.optim.sgd import SGD

from fairseq_helpers import BIN, SIZES, USER_DIR, batch, build, cli, toy_data_bin, train_argv, write_dicts
from node_transformer import metric_names as mn
from test_cli import log_records
from node_transformer.config import NodeArgumentError, NodeConfig
from node_transformer.ode_block import fixed_step_fallback, ode_blocks

ENV = {"OMP_NUM_THREADS": "1"}
PAIRS = [("w1 w2 w3 w4", "w5 w6 w7"), ("w3 w2", "w8 w9 w10 w11 w4"), ("w7", "w1 w2")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def sgd(model):
    return SGD(argparse.Namespace(lr=[0.1], momentum=0.0, weight_decay=0.0),
               [p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("estimate, backprop", [("local", "adjoint"), ("global", "direct")])
def test_training_loss_adds_each_blocks_error_per_position(data_dir, estimate, backprop):
    w = 0.5
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--dropout", "0.0",
                           "--node-error-penalty", str(w), "--node-error-estimate", estimate,
                           "--node-backprop", backprop)
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    sample = batch(task, PAIRS)
    torch.manual_seed(0)
    loss, _, log = task.train_step(sample, model, crit, sgd(model), update_num=1)
    enc, dec = model.encoder.layers[0].block, model.decoder.layers[0].block
    errors = {"enc": float(enc.penalties["error"]), "dec": float(dec.penalties["error"])}
    assert errors["enc"] > 0 and errors["dec"] > 0
    # per side in the log, and per position (source / target tokens) in the loss
    assert {k: log[mn.error_key(k)] for k in errors} == errors
    assert "rnode_kinetic" not in log
    positions = {"enc": 10, "dec": sample["ntokens"]}
    assert (float(enc.positions), float(dec.positions)) == (positions["enc"], positions["dec"])
    penalty = w * sum(errors[k] * positions[k] for k in errors)
    assert float(loss.detach()) == pytest.approx(float(log["loss"]) + penalty, rel=1e-9)
    # its gradient reaches the dynamics of each side
    model.zero_grad()
    model(**sample["net_input"])
    (enc.penalties["error"] + dec.penalties["error"]).backward()
    assert enc.dynamics.fc2.weight.grad.abs().max() > 0
    assert dec.dynamics.fc2.weight.grad.abs().max() > 0
    # validation: no estimate, no key; the rk4 fallback: no estimate either
    _, _, vlog = task.valid_step(sample, model, crit)
    assert not any(k.startswith(mn.ERROR_PREFIX) for k in vlog)
    model.train()
    with fixed_step_fallback(model, 2):
        model(**sample["net_input"])
    assert all("error" not in b.penalties for b in (enc, dec))


def node_config(**kw):
    args = argparse.Namespace(node_encoder=True, **kw)
    NodeConfig.set_defaults(args)
    return NodeConfig.from_namespace(args)


@pytest.mark.parametrize("kw, message", [
    (dict(node_error_penalty=-1.0), "--node-error-penalty must be >= 0, got -1.0"),
    (dict(node_error_penalty=1.0, node_error_estimate="step"),
     "--node-error-estimate must be local or global, got 'step'"),
    (dict(node_error_estimate="global", node_backprop="direct"),
     "--node-error-estimate applies with --node-error-penalty only"),
    (dict(node_error_penalty=1.0, node_method="rk4"),
     "--node-error-penalty needs a method with an embedded error estimate (dopri8, dopri5, "
     "bosh3, fehlberg2, adaptive_heun), got --node-method rk4"),
    (dict(node_error_penalty=1.0, node_method="scipy_solver"), "got --node-method scipy_solver"),
    (dict(node_error_penalty=1.0, node_error_estimate="global"),
     "--node-error-estimate global needs --node-backprop direct"),
    (dict(node_error_penalty=1.0, node_block="rk2-gated", node_dynamics="prenorm"),
     "--node-error-penalty applies to --node-block ode only"),
])
def test_impossible_error_penalties_are_refused(kw, message):
    with pytest.raises(NodeArgumentError, match=re.escape(message)):
        node_config(**kw).validate()


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"])
def test_every_method_with_an_error_pair_is_accepted(method):
    node_config(node_error_penalty=1.0, node_method=method).validate()
    node_config(node_error_penalty=1.0, node_method=method, node_error_estimate="global",
                node_backprop="direct").validate()


# -- fairseq-train on the toy task --------------------------------------------------------------

MODEL = [*SIZES["tiny"], "--share-all-embeddings", "--dropout", "0.1"]


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    return toy_data_bin(tmp_path_factory.mktemp("toy"), 40, 8, 4, env=ENV)[0]


def test_fairseq_train_logs_each_sides_error(data_bin, tmp_path):
    save = str(tmp_path / "ckpt")
    proc = cli("fairseq-train", *train_argv(
        data_bin, save, MODEL, "--node-encoder", "--node-decoder", "--node-error-penalty", "0.1",
        "--node-error-estimate", "global", "--node-backprop", "direct",
        lr=5e-3, max_tokens=400, epochs=1,
        log=("--log-format", "json", "--log-interval", "1", "--tensorboard-logdir",
             os.path.join(save, "tb"))), env=ENV)
    inner, epoch, valid = log_records(proc, "train_inner"), log_records(proc, "train"), log_records(proc, "valid")
    assert inner and len(epoch) == 1 and len(valid) == 1
    for rec, prefix in [(r, "") for r in inner] + [(epoch[0], "train_")]:
        for key in mn.ERROR_KEYS:
            assert float(rec[prefix + key]) > 0, (key, rec)
    assert not any(k.startswith("valid_" + mn.ERROR_PREFIX) for k in valid[0])
    events = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(save, "tb", "train"))
              for f in fs]
    written = b"".join(open(f, "rb").read() for f in events)
    assert all(key.encode() in written for key in mn.ERROR_KEYS), "error estimates not in tensorboard"


@pytest.mark.parametrize("flags, message", [
    (["--node-error-penalty", "0.1", "--node-method", "rk4"],
     "--node-error-penalty needs a method with an embedded error estimate (dopri8, dopri5, bosh3, "
     "fehlberg2, adaptive_heun), got --node-method rk4"),
    (["--node-error-penalty", "0.1", "--node-error-estimate", "global"],
     "--node-error-estimate global needs --node-backprop direct (the adjoint keeps no graph of "
     "the forward's steps): use local"),
])
def test_fairseq_train_refuses_with_one_line(data_bin, tmp_path, flags, message):
    proc = subprocess.run(
        [os.path.join(BIN, "fairseq-train"), data_bin, "--user-dir", USER_DIR, "--task",
         "node_translation", "--arch", "node_transformer", *MODEL, "--node-encoder", *flags,
         "--save-dir", str(tmp_path / "ckpt"), "--max-epoch", "1", "--max-tokens", "400"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, **ENV))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "node_transformer: error: " + message
    assert "Traceback" not in proc.stderr


# -- issue 37: the error penalty beside RNODE and LayerDrop -------------------------------------

@pytest.mark.parametrize("estimate, backprop", [("global", "direct"), ("local", "adjoint"),
                                                ("local", "direct")])
@pytest.mark.parametrize("rnode", [["--node-kinetic-energy", "0.1"],
                                   ["--node-kinetic-energy", "0.1", "--node-jacobian-norm", "0.1"]])
def test_error_penalty_with_rnode_has_finite_gradients(data_dir, estimate, backprop, rnode):
    """With K alone the J channel's error is exactly 0, and sqrt's slope there made every
    gradient NaN (the padded batch's norm; torchdiffeq's default norm likewise)."""
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--dropout", "0.0",
                           "--node-error-penalty", "0.1", "--node-error-estimate", estimate,
                           "--node-backprop", backprop, *rnode, dtype=torch.float32)
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    for pairs in (PAIRS, PAIRS[:1]):  # padded, and a batch without pads
        model.zero_grad()
        torch.manual_seed(1)
        task.train_step(batch(task, pairs), model, crit, sgd(model), update_num=1)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().max() > 0 for g in grads)


def _drop_all(layers):
    layers.p = 1.0  # fairseq's LayerDropModuleList keeps a layer when its draw exceeds p


@pytest.mark.parametrize("penalty", [["--node-error-penalty", "0.1"],
                                     ["--node-kinetic-energy", "0.1"],
                                     ["--node-jacobian-norm", "0.1"]])
def test_a_block_layerdrop_skips_adds_no_penalty(data_dir, penalty):
    """A dropped block kept its previous batch's penalty: 'Trying to backward through the
    graph a second time' at the next update."""
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--dropout", "0.0",
                           "--encoder-layers", "2", "--encoder-layerdrop", "0.5", *penalty)
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    sample = batch(task, PAIRS)
    model.encoder.layers.p = 0.0  # both encoder blocks run
    task.train_step(sample, model, crit, sgd(model), update_num=1)
    assert all(b.penalties for b in ode_blocks(model.encoder))
    _drop_all(model.encoder.layers)
    loss, _, log = task.train_step(sample, model, crit, sgd(model), update_num=2)
    assert all(not b.penalties for b in ode_blocks(model.encoder))
    dec = model.decoder.layers[0].block
    w = {"error": 0.1, "kinetic": 0.1, "jacobian": 0.1}
    added = sum(w[k] * float(v) * float(dec.positions) for k, v in dec.penalties.items()
                if k in penalty[0])
    assert float(loss.detach()) == pytest.approx(float(log["loss"]) + added, rel=1e-9)
    if "--node-error-penalty" in penalty:
        assert log[mn.error_batches_key("enc")] == 0 and log[mn.error_batches_key("dec")] == 1


def test_fairseq_train_with_layerdrop_rnode_and_the_error_penalty(data_bin, tmp_path):
    """Each of these stopped fairseq-train on main: layerdrop + a penalty at the second update
    (a freed graph), the error penalty + kinetic energy with NaN gradients (crash.pt)."""
    save = str(tmp_path / "ckpt")
    proc = cli("fairseq-train", *train_argv(
        data_bin, save, MODEL, "--node-encoder", "--node-decoder", "--encoder-layers", "2",
        "--decoder-layers", "2", "--encoder-layerdrop", "0.5", "--decoder-layerdrop", "0.5",
        "--node-error-penalty", "0.1", "--node-kinetic-energy", "0.01",
        lr=5e-3, max_tokens=100, epochs=2,
        log=("--log-format", "json", "--log-interval", "1")), env=ENV)
    inner = log_records(proc, "train_inner")
    assert len(inner) >= 6 and len(log_records(proc, "train")) == 2
    assert all(math.isfinite(float(r["loss"])) for r in inner)
    assert not os.path.exists(os.path.join(save, "crash.pt"))
    assert os.path.exists(os.path.join(save, "checkpoint_last.pt"))


def test_fixed_step_batches_log_no_error_estimate(data_bin, tmp_path):
    """Batches solved again by the rk4 fallback have no estimate: err_enc/err_dec showed 0
    for them (a perfect estimate); now they leave the mean, and an interval of none of them
    logs no err_ column at all."""
    save = str(tmp_path / "ckpt")
    proc = cli("fairseq-train", *train_argv(
        data_bin, save, MODEL, "--node-encoder", "--node-decoder", "--node-error-penalty", "0.1",
        "--node-rtol", "1e-7", "--node-atol", "1e-7", "--node-max-nfe", "8",
        "--node-on-budget", "fixed-step", "--node-fallback-steps", "1",
        lr=5e-3, max_tokens=400, epochs=1,
        log=("--log-format", "json", "--log-interval", "1")), env=ENV)
    inner, epoch = log_records(proc, "train_inner"), log_records(proc, "train")
    assert inner and all(float(r["node_fixed_step"]) == 1 for r in inner)  # one batch an update
    assert float(epoch[0]["train_node_fixed_step"]) == len(inner)
    for rec, prefix in [(r, "") for r in inner] + [(epoch[0], "train_")]:
        assert not any(k.startswith(prefix + mn.ERROR_PREFIX) for k in rec), rec
