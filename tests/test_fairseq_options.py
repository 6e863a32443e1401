"""fairseq's Transformer options on a NODE side: docs/training.md tabulates every field of
fairseq's TransformerConfig (works / refused / n/a for a NODE encoder and a NODE decoder);
these tests hold the table to fairseq's fields and to what the model does."""

import dataclasses
import os
import re
from types import SimpleNamespace

import pytest
import torch
from fairseq import utils
from fairseq.checkpoint_utils import prune_state_dict
from fairseq.models.transformer import TransformerConfig

from fairseq_helpers import ROOT, TINY, USER_DIR, batch, build, cli, write_dicts
from node_transformer.ode_block import ode_blocks

TABLE_HEADING = "## fairseq's Transformer options on a NODE side"
CELLS = {"works", "refused", "n/a"}
SIDES = {  # a model whose encoder / decoder is NODE, the other side one classic layer
    "encoder": ["--node-encoder", "--decoder-layers", "1"],
    "decoder": ["--node-decoder", "--encoder-layers", "1"],
}
# A non-default value for each refused field that is not a boolean switch.
VALUES = {
    "attention_dropout": "0.1",
    "quant_noise.pq": "0.1",
    "quant_noise.scalar": "0.1",
    "min_params_to_wrap": "1000",
    "base_layers": "1",
    "encoder.xformers_att_config": '{"name": "scaled_dot_product"}',
    "decoder.xformers_att_config": '{"name": "scaled_dot_product"}',
}


def config_fields(cls=TransformerConfig, prefix=""):
    """{dotted name: dataclass field} of TransformerConfig and its nested groups, without
    FairseqDataclass's own ``_name``."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        if dataclasses.is_dataclass(f.type):
            out.update(config_fields(f.type, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def flag_of(name: str) -> str:
    return "--" + name.replace(".", "-").replace("_", "-")


def read_table():
    """The rows of docs/training.md's table: {field: (flag, encoder, decoder, note)}."""
    text = open(os.path.join(ROOT, "docs", "training.md"), encoding="utf-8").read()
    assert TABLE_HEADING in text
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([\w.]+)`", cells[0]) if len(cells) == 5 else None
        if m:
            assert m.group(1) not in rows, f"two rows for {m.group(1)}"
            rows[m.group(1)] = (cells[1].strip("`"), cells[2], cells[3], cells[4])
    return rows


TABLE = read_table()
REFUSED = sorted((name, side) for name, (_, enc, dec, _) in TABLE.items()
                 for side, cell in (("encoder", enc), ("decoder", dec)) if cell == "refused")
FIELDS = config_fields()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def refusal(data_dir, *flags) -> str:
    """The one line build_model stops with (fails if it builds)."""
    with pytest.raises(SystemExit) as e:
        build(data_dir, *flags)
    message = str(e.value)
    assert message.startswith("node_transformer: error: ") and "\n" not in message, message
    return message


def setting(name):
    """The command-line words that set field ``name`` to a non-default value."""
    if FIELDS[name].type is bool:
        return [flag_of(name)]
    assert name in VALUES, f"give tests/test_fairseq_options.py's VALUES a value for {name}"
    return [flag_of(name), VALUES[name]]


def test_every_transformer_config_field_has_a_row():
    assert len(FIELDS) > 50  # the walk reached the nested groups
    assert {"encoder.layers", "decoder.output_dim", "quant_noise.pq"} <= set(FIELDS)
    missing = sorted(set(FIELDS) - set(TABLE))
    assert not missing, f"docs/training.md has no row for {missing}"


def test_rows_name_existing_fields_and_their_flags():
    extra = sorted(set(TABLE) - set(FIELDS))
    assert not extra, f"docs/training.md names fields TransformerConfig lacks: {extra}"
    for name, (flag, enc, dec, note) in TABLE.items():
        assert {enc, dec} <= CELLS, name
        assert note, name
        assert flag == ("none" if name == "decoder.input_dim" else flag_of(name)), name


def test_the_table_refuses_what_the_issue_named():
    for name in ("no_cross_attention", "cross_self_attention", "checkpoint_activations",
                 "offload_activations"):
        assert TABLE[name][2] == "refused", name


@pytest.mark.parametrize("name, side", REFUSED)
def test_refused_options_stop_build_with_one_line_naming_the_flag(data_dir, name, side):
    message = refusal(data_dir, *SIDES[side], *setting(name))
    assert flag_of(name) in message
    assert f"NODE {side}" in message


@pytest.mark.parametrize("name", sorted({name for name, _ in REFUSED}))
def test_refusals_are_the_node_sides_not_the_plugins(data_dir, name):
    """Without a NODE side the same value is fairseq's business: it builds, or fails in
    fairseq (no xformers, BASE layers without distributed training), never with our line."""
    try:
        build(data_dir, *setting(name))
    except SystemExit as e:
        assert not str(e).startswith("node_transformer"), str(e)
    except Exception:  # noqa: BLE001  (fairseq's own failure)
        pass


@pytest.mark.parametrize("side", sorted(SIDES))
def test_a_node_side_without_blocks_is_refused(data_dir, side):
    message = refusal(data_dir, *SIDES[side], f"--{side}-layers", "0")
    assert message.endswith(f"--{side}-layers 0 leaves --node-{side} no ODE block")


def test_normalize_before_is_accepted_where_it_is_the_node_sides_form(data_dir):
    """--node-dynamics prenorm is the pre-norm form: with --encoder-normalize-before it is
    the same model; the study's dynamics are not pre-norm, and refuse it."""
    prenorm = ["--node-encoder", "--node-decoder", "--node-dynamics", "prenorm"]
    torch.manual_seed(0)
    _, plain, _ = build(data_dir, *prenorm)
    torch.manual_seed(0)
    _, both, _ = build(data_dir, *prenorm, "--encoder-normalize-before", "--decoder-normalize-before")
    assert plain.state_dict().keys() == both.state_dict().keys()
    differ = [k for k, v in plain.state_dict().items() if not torch.equal(v, both.state_dict()[k])]
    assert not differ
    assert "--node-dynamics" in refusal(data_dir, "--node-encoder", "--encoder-normalize-before")


def test_layerdrop_builds_its_module_list_with_or_without_penalties(data_dir):
    """A dropped block adds no penalty (tests/test_error_penalty.py trains with both), so
    LayerDrop is no longer refused beside RNODE or the error penalty."""
    for penalty in ([], ["--node-kinetic-energy", "0.1"], ["--node-error-penalty", "0.1"]):
        _, model, _ = build(data_dir, "--node-encoder", "--encoder-layers", "2",
                            "--encoder-layerdrop", "0.5", *penalty)
        assert type(model.encoder.layers).__name__ == "LayerDropModuleList"


@pytest.mark.parametrize("name", ["--activation-dropout", "--relu-dropout"])
def test_activation_dropout_applies_without_dropout(data_dir, name):
    """--activation-dropout (or fairseq's old --relu-dropout) on NODE sides with --dropout 0:
    two seeds give two outputs in training, as in fairseq's Transformer (it was ignored);
    with neither, the model is deterministic."""
    def two_seeds(*flags):
        task, model, _ = build(data_dir, "--node-encoder", "--node-decoder", "--dropout", "0", *flags)
        model.train()
        sample = batch(task, [("w1 w2 w3", "w4 w5")])
        runs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            runs.append(model(**sample["net_input"])[0])
        return runs

    assert not torch.equal(*two_seeds(name, "0.5"))
    assert torch.equal(*two_seeds())


def test_dynamics_take_the_layer_options(data_dir):
    _, model, _ = build(data_dir, *SIDES["encoder"], "--activation-fn", "gelu", "--relu-dropout",
                        "0.2", "--encoder-ffn-embed-dim", "24")
    dynamics = ode_blocks(model.encoder)[0].dynamics
    assert dynamics.activation_fn is utils.get_activation_fn("gelu")
    assert dynamics.activation_dropout == 0.2  # fairseq's old name, as its layers read it
    assert dynamics.fc1.out_features == 24
    _, model, _ = build(data_dir, *SIDES["decoder"], "--activation-dropout", "0.3")
    assert ode_blocks(model.decoder)[0].dynamics.activation_dropout == 0.3


def test_layers_to_keep_prunes_ode_blocks_as_fairseq_prunes_layers(data_dir):
    fast = ["--node-encoder", "--node-decoder", "--node-method", "rk4", "--node-steps", "1"]
    _, two, _ = build(data_dir, *fast, "--encoder-layers", "2", "--decoder-layers", "2")
    _, one, _ = build(data_dir, *fast)
    kept = prune_state_dict(two.state_dict(), SimpleNamespace(
        arch="node_transformer", encoder_layers_to_keep="1", decoder_layers_to_keep="1"))
    one.load_state_dict(kept)  # strict: every block's weights found
    for side in ("encoder", "decoder"):
        assert torch.equal(getattr(one, side).layers[0].block.dynamics.fc1.weight,
                           getattr(two, side).layers[1].block.dynamics.fc1.weight)


def test_adaptive_softmax_on_a_node_decoder(data_dir):
    from fairseq.criterions.adaptive_loss import AdaptiveLoss

    task, model, _ = build(data_dir, *SIDES["decoder"], "--adaptive-softmax-cutoff", "8")
    assert model.decoder.adaptive_softmax is not None
    sample = batch(task, [("w1 w2 w3", "w4 w5"), ("w2", "w6 w7 w8")])
    loss, _, _ = AdaptiveLoss(task, sentence_avg=False)(model, sample)
    loss.backward()
    assert torch.isfinite(loss) and ode_blocks(model.decoder)[0].dynamics.fc1.weight.grad is not None


@pytest.mark.parametrize("flags, message", [
    (["--node-decoder", "--no-cross-attention"], "--no-cross-attention is not available with a "
     "NODE decoder: the NODE decoder's dynamics always attend to the encoder output"),
    (["--node-encoder", "--offload-activations"], "--offload-activations is not available with a "
     "NODE encoder: ODE blocks are not checkpointed: .*"),
    (["--node-encoder", "--encoder-layers", "0"], "--encoder-layers 0 leaves --node-encoder no ODE block"),
])
def test_fairseq_train_stops_with_one_line(data_dir, tmp_path, flags, message):
    save = tmp_path / "ckpt"
    proc = cli("fairseq-train", data_dir, "--user-dir", USER_DIR, "--task", "node_translation",
               "--source-lang", "src", "--target-lang", "tgt", "--arch", "node_transformer", *TINY,
               *flags, "--save-dir", str(save), "--max-epoch", "1", "--max-tokens", "100",
               check=False, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines and re.fullmatch("node_transformer: error: " + message, lines[-1]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not save.exists() or not any(save.iterdir())
