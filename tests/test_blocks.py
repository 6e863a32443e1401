"""The NODE reduces to a layer, and the learned RK blocks (--node-block rk2-gated / pc).

* A NODE encoder and decoder with pre-norm dynamics and one Euler step are fairseq's own
  pre-norm Transformer (weights copied over, float64, training mode with dropout 0), with and
  without incremental decoding.
* rk2-gated at its initial gate is Heun's method; pc follows its formulas; gradients agree
  with finite differences; cached decoding equals teacher forcing; old checkpoints' per-block
  norm loads as the side's norm.
"""

import re

import pytest
import torch
from torch.func import functional_call

from fairseq_helpers import batch, build, write_dicts
from node_transformer.config import NodeArgumentError, NodeConfig
from node_transformer.dynamics import PreNormDynamics, SolveDropout
from node_transformer.ode_block import ODEBlock, depth_blocks
from node_transformer.rk_blocks import GatedRK2Block, PredictorCorrectorBlock, RK2Gate, evaluations
from odeint_ext import SolverSettings
from test_decoding import PAIRS, float64_softmax, step_by_step  # noqa: F401  (fixture)

PRENORM = ["--node-dynamics", "prenorm", "--node-output-init", "xavier"]
# Direct backprop: the adjoint's reverse Euler step from h(1) does not retrace the forward's
# step, so its gradients are not those of the layer (the forward still is the layer).
NODE_EULER = ["--node-encoder", "--node-decoder", *PRENORM, "--node-method", "euler",
              "--node-backprop", "direct"]
CLASSIC_PRENORM = ["--encoder-normalize-before", "--decoder-normalize-before"]
NO_DROPOUT = ["--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def _layer_names(side: str, i: int):
    """fairseq's pre-norm layer's parameter prefixes -> the NODE layer's dynamics'."""
    node = f"{side}.layers.{i}.block.dynamics."
    classic = f"{side}.layers.{i}."
    pairs = {"self_attn.": "self_attn.", "self_attn_layer_norm.": "self_attn_norm.",
             "fc1.": "fc1.", "fc2.": "fc2.", "final_layer_norm.": "ffn_norm."}
    if side == "decoder":
        pairs.update({"encoder_attn.": "encoder_attn.", "encoder_attn_layer_norm.": "encoder_attn_norm."})
    return {classic + c: node + n for c, n in pairs.items()}


def copy_classic_into_node(classic, node, layers):
    """The NODE model's state dict made of the classic's weights."""
    renames = {}
    for side in ("encoder", "decoder"):
        for i in range(layers):
            renames.update(_layer_names(side, i))
    src = classic.state_dict()
    out = {}
    for key in node.state_dict():
        match = [(c, n) for c, n in renames.items() if key.startswith(n)]
        source = match[0][0] + key[len(match[0][1]):] if match else key
        out[key] = src[source]
    assert len(out) == len(src), "every classic weight has a NODE place, and no more"
    node.load_state_dict(out)


@pytest.mark.parametrize("layers", [1, 3])
def test_node_with_prenorm_euler_is_fairseqs_prenorm_transformer(data_dir, layers, float64_softmax):
    size = ["--encoder-layers", str(layers), "--decoder-layers", str(layers), *NO_DROPOUT]
    torch.manual_seed(0)
    task, classic, _ = build(data_dir, *CLASSIC_PRENORM, *size)
    torch.manual_seed(1)
    _, node, _ = build(data_dir, *NODE_EULER, *size)
    blocks = depth_blocks(node)
    assert len(blocks) == 2 * layers and all(b.solver.method == "euler" for b in blocks)
    copy_classic_into_node(classic, node, layers)
    sample = batch(task, PAIRS)
    src, prev = sample["net_input"], sample["net_input"]["prev_output_tokens"]
    real = prev.ne(task.target_dictionary.pad())
    for m in (classic, node):
        m.train()  # dropout 0: training mode must not change anything either
    full_classic, extra_classic = classic(src["src_tokens"], src["src_lengths"], prev)
    full_node, extra_node = node(src["src_tokens"], src["src_lengths"], prev)
    torch.testing.assert_close(full_node[real], full_classic[real], rtol=0, atol=1e-9)
    # fairseq's alignment (the last layer's encoder-attention, averaged over heads) too.
    align_classic, align_node = extra_classic["attn"][0], extra_node["attn"][0]
    assert align_node.shape == align_classic.shape == (*prev.shape, src["src_tokens"].size(1))
    torch.testing.assert_close(align_node[real], align_classic[real], rtol=0, atol=1e-9)
    # A gradient step sees the same function too.
    full_node[real].sum().backward()
    full_classic[real].sum().backward()
    g_node = node.decoder.layers[0].block.dynamics.fc1.weight.grad
    torch.testing.assert_close(g_node, classic.decoder.layers[0].fc1.weight.grad, rtol=0, atol=1e-9)
    # Incremental decoding: the NODE decoder's stage cache against fairseq's own cache.
    for m in (classic, node):
        m.eval()
    with torch.no_grad():
        steps_node, _, _ = step_by_step(node, src, prev)
        steps_classic, _, _ = step_by_step(classic, src, prev)
    torch.testing.assert_close(steps_node[real], steps_classic[real], rtol=0, atol=1e-9)
    torch.testing.assert_close(steps_node[real], full_node.detach()[real], rtol=0, atol=1e-9)
    with torch.no_grad():
        steps_align = [alignment_by_step(m, src, prev) for m in (node, classic)]
    torch.testing.assert_close(steps_align[0][real], steps_align[1][real], rtol=0, atol=1e-9)
    torch.testing.assert_close(steps_align[0][real], align_node.detach()[real], rtol=0, atol=1e-9)


def alignment_by_step(model, src, prev):
    """The decoder's alignment for each position, one position per call, as generation asks."""
    enc = model.encoder(src["src_tokens"], src["src_lengths"])
    state, rows = {}, []
    for i in range(prev.size(1)):
        _, extra = model.decoder(prev[:, : i + 1], encoder_out=enc, incremental_state=state)
        rows.append(extra["attn"][0][:, -1])
    return torch.stack(rows, dim=1)


def _dynamics(width=8, torch_seed=0):
    torch.manual_seed(torch_seed)
    return PreNormDynamics(width, 16, 2, self_attention=True, encoder_attention=False,
                           output_init="xavier").double()


def _inputs():
    return dict(drop=SolveDropout(0.0, False))


def test_rk2_gated_starts_as_heun_and_pc_follows_its_formulas():
    dyn = _dynamics()
    h0 = torch.randn(5, 3, 8, dtype=torch.float64)
    heun = ODEBlock(dyn, SolverSettings(method="heun2", steps=1, backprop="direct"))
    gated = GatedRK2Block(dyn, RK2Gate(8).double())
    torch.testing.assert_close(gated(h0, **_inputs()), heun(h0, **_inputs()), rtol=0, atol=1e-12)

    def F(y):
        return dyn(torch.zeros((), dtype=y.dtype), y, **_inputs())

    pc2 = PredictorCorrectorBlock(dyn, order=2).double()
    with torch.no_grad():
        pc2.a_logit.fill_(0.3)
        pc2.b_logit.fill_(-0.7)
    a, b = torch.sigmoid(torch.tensor(0.3, dtype=torch.float64)), torch.sigmoid(torch.tensor(-0.7, dtype=torch.float64))
    f1 = F(h0)
    f2 = F(h0 + f1)
    pred = h0 + a * (1 - a) * f1 + a * f2
    want = h0 + b * F(pred) + (1 - b) * f1
    torch.testing.assert_close(pc2(h0, **_inputs()), want, rtol=0, atol=1e-12)

    pc4 = PredictorCorrectorBlock(dyn, order=4).double()
    a = 0.5
    k1 = F(h0)
    k2 = F(h0 + k1 / 2)
    k3 = F(h0 + k2 / 2)
    k4 = F(h0 + k3)
    pred = h0 + a * (1 - a) ** 3 * k1 + a * (1 - a) ** 2 * k2 + a * (1 - a) * k3 + a * k4
    torch.testing.assert_close(pc4(h0, **_inputs()), h0 + 0.5 * F(pred) + 0.5 * k1, rtol=0, atol=1e-12)
    # One record per forward, with the block's cost in evaluations.
    assert [s.nfe_forward for s in pc4.solves] == [evaluations("pc", 4)] == [5]
    assert [s.nfe_forward for s in gated.solves] == [evaluations("rk2-gated")] == [2]


@pytest.mark.parametrize("kind", ["rk2-gated", "pc2", "pc4"])
def test_gradients_match_finite_differences(kind):
    """Every parameter (dynamics, gate, a, b) and the input state, through the block."""
    dyn = _dynamics(width=4)
    if kind == "rk2-gated":
        block = GatedRK2Block(dyn, RK2Gate(4).double())
        torch.nn.init.normal_(block.gate.proj.weight, std=0.3)  # not the symmetric start
    else:
        block = PredictorCorrectorBlock(dyn, order=int(kind[-1])).double()
        with torch.no_grad():
            block.a_logit.fill_(0.4)
            block.b_logit.fill_(-0.2)
    names = [n for n, _ in block.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in block.named_parameters()]
    h0 = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, False, True], [False, False, False]])  # a pad: held fixed

    def f(h, *ps):
        return functional_call(block, dict(zip(names, ps)), (h,), dict(padding_mask=mask, **_inputs()))

    assert torch.autograd.gradcheck(f, (h0, *params), eps=1e-6, atol=1e-6)
    out = f(h0, *params)
    torch.testing.assert_close(out[2, 0], h0[2, 0])  # the padded position did not move


CACHED = {
    "rk2-gated-2layers": ["--node-decoder", *PRENORM, "--node-block", "rk2-gated", "--decoder-layers", "2"],
    "pc2": ["--node-decoder", *PRENORM, "--node-block", "pc"],
    "pc4-study": ["--node-decoder", "--node-block", "pc", "--node-pc-order", "4"],
    "rk2-gated-separated-aug": ["--node-decoder", "--node-separated-decoder", *PRENORM,
                                "--node-block", "rk2-gated", "--node-augment-dims", "1"],
}


@pytest.mark.parametrize("case", sorted(CACHED))
def test_cached_decoding_equals_teacher_forcing(data_dir, case, float64_softmax):
    torch.manual_seed(0)
    task, model, _ = build(data_dir, "--encoder-layers", "1", *CACHED[case])
    model.eval()
    assert model.decoder.cached_decoding()
    with torch.no_grad():  # the learned weights away from their symmetric start
        for block in depth_blocks(model.decoder):
            for p in block.parameters():
                if p.dim() < 2 or p.shape[0] == 1:
                    p.normal_(0, 0.5)
    sample = batch(task, PAIRS)
    src, prev = sample["net_input"], sample["net_input"]["prev_output_tokens"]
    new_order = torch.tensor([2, 0, 0, 1, 2])
    with torch.no_grad():
        steps, prev2, _ = step_by_step(model, src, prev, reorder_at=3, new_order=new_order)
        full, _ = model(src["src_tokens"][new_order], src["src_lengths"][new_order], prev2)
    real = prev2.ne(task.target_dictionary.pad())
    torch.testing.assert_close(steps[real], full[real], rtol=0, atol=1e-9)


def test_rk2_gate_is_shared_by_a_sides_blocks_and_saved_once_per_place(data_dir):
    _, model, _ = build(data_dir, "--node-encoder", "--node-decoder", *PRENORM,
                        "--node-block", "rk2-gated", "--encoder-layers", "3", "--decoder-layers", "2")
    enc = [layer.block.gate for layer in model.encoder.layers]
    dec = [layer.block.gate for layer in model.decoder.layers]
    assert all(g is enc[0] for g in enc) and all(g is dec[0] for g in dec) and enc[0] is not dec[0]
    width = 8
    gate_params = [p for p in model.parameters() if p.shape in ((1, 2 * width), (1,))]
    assert len(gate_params) == 4  # one weight and one bias per side, however many blocks
    # A checkpoint round trip keeps them shared.
    _, again, _ = build(data_dir, "--node-encoder", "--node-decoder", *PRENORM,
                        "--node-block", "rk2-gated", "--encoder-layers", "3", "--decoder-layers", "2")
    with torch.no_grad():
        model.encoder.layers[2].block.gate.proj.bias.fill_(0.25)
    again.load_state_dict(model.state_dict())
    assert again.encoder.layers[0].block.gate.proj.bias.item() == 0.25
    assert again.encoder.layers[0].block.gate is again.encoder.layers[2].block.gate


def test_old_checkpoints_per_block_norm_becomes_the_sides_norm(data_dir):
    """Before this version a pre-norm block normalised its own output (layers.0.final_norm):
    for one block the same function as the side's norm after it."""
    torch.manual_seed(0)
    task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", *PRENORM, "--node-method",
                           "rk4", "--node-steps", "1")
    model.eval()
    old = {}
    for key, value in model.state_dict().items():
        for side in ("encoder", "decoder"):
            if key.startswith(f"{side}.layer_norm."):
                key = f"{side}.layers.0.final_norm." + key.split(".")[-1]
        old[key] = value.clone()
    torch.manual_seed(5)
    _, fresh, _ = build(data_dir, "--node-encoder", "--node-decoder", *PRENORM, "--node-method",
                        "rk4", "--node-steps", "1")
    fresh.eval()
    fresh.load_state_dict(old)  # fairseq's upgrade path (load_state_dict upgrades first)
    sample = batch(task, PAIRS)["net_input"]
    with torch.no_grad():
        torch.testing.assert_close(fresh(**sample)[0], model(**sample)[0], rtol=0, atol=1e-12)
    # Several blocks, each normalised: not the same function any more, and said so.
    _, two, _ = build(data_dir, "--node-encoder", *PRENORM, "--node-method", "euler",
                      "--encoder-layers", "2")
    state = {("encoder.layers.1.final_norm." + k.split(".")[-1] if k.startswith("encoder.layer_norm.") else k): v
             for k, v in two.state_dict().items()}
    state.update({"encoder.layers.0.final_norm.weight": torch.ones(8, dtype=torch.float64),
                  "encoder.layers.0.final_norm.bias": torch.zeros(8, dtype=torch.float64)})
    with pytest.raises(ValueError, match="normalises after each of its 2 pre-norm ODE blocks"):
        two.load_state_dict(state)


@pytest.mark.parametrize("flags, named", [
    (dict(node_block="rk3"), "--node-block must be one of ode, rk2-gated, pc"),
    (dict(node_block="pc", node_pc_order=3), "--node-pc-order must be one of 2, 4"),
    (dict(node_block="ode", node_pc_order=4), "--node-pc-order applies to --node-block pc only"),
    (dict(node_block="rk2-gated", node_pc_order=4), "--node-pc-order applies to --node-block pc only"),
    (dict(node_block="rk2-gated", node_method="rk4"), "--node-method applies to --node-block ode only"),
    (dict(node_block="pc", node_rtol=1e-3, node_kinetic_energy=0.1),
     "--node-rtol, --node-kinetic-energy apply to --node-block ode only"),
    (dict(node_block="pc", node_ts="0 0.5 1"), "--node-block pc takes one step: --node-ts must be two times"),
])
def test_block_flags_that_cannot_work_are_named(flags, named):
    with pytest.raises(NodeArgumentError, match=named.replace("(", r"\(")):
        NodeConfig(node_encoder=True, **flags).validate()


def test_hub_translates_with_a_trained_rk2_gated_model_like_fairseq_generate(tmp_path):
    """A learned RK block model through fairseq-train's checkpoint and the hub: the hub's
    cached decoding gives fairseq-generate's translations."""
    import os

    import node_transformer
    from fairseq_helpers import USER_DIR, cli
    from toy_model import ENV, read, spm_data_bin, train

    data, raw = spm_data_bin(str(tmp_path))
    save = str(tmp_path / "ckpt")
    train(data, save, "--node-encoder", "--node-decoder", *PRENORM, "--node-block", "rk2-gated",
          "--encoder-layers", "2", epochs=1)
    gen = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--task", "node_translation",
              "--path", os.path.join(save, "checkpoint_best.pt"), "--gen-subset", "test",
              "--batch-size", "1", "--beam", "2", "--max-len-b", "8", "--remove-bpe",
              "sentencepiece", env=ENV).stdout
    expected = {int(i): d for i, d in re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", gen, re.M)}
    hub = node_transformer.from_pretrained(save, data_name_or_path=data, batch_size=1, device="cpu")
    sources = read(os.path.join(raw, "test.src"))
    assert sorted(expected) == list(range(len(sources)))
    assert hub.translate(sources, beam=2, max_len_b=8) == [expected[i] for i in range(len(sources))]
    assert all(isinstance(b, GatedRK2Block) for b in depth_blocks(hub.models[0].encoder))
