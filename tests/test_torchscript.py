"""TorchScript: a model with a NODE side says, in one error, that it cannot be scripted and
why; a model with no NODE side (the classic Transformer under --arch node_transformer) still
scripts as fairseq's does, the model and fairseq's SequenceGenerator alike."""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from fairseq_helpers import batch, build, write_dicts
from node_transformer.layers import NotScriptableError

NODE_VARIANTS = {
    "full": ["--node-encoder", "--node-decoder"],
    "separated": ["--node-encoder", "--node-decoder", "--node-separated-decoder"],
    "decoder-only": ["--node-decoder", "--encoder-layers", "1"],
    "encoder-only-rk2-gated": ["--node-encoder", "--decoder-layers", "1", "--node-dynamics",
                               "prenorm", "--node-block", "rk2-gated"],
}
PAIRS = [("w1 w2 w3", "w4 w5"), ("w2 w3", "w1")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def model_and_generator(data_dir, *flags):
    task, model, _ = build(data_dir, *flags, "--decoder-layers", "1", "--encoder-layers", "1",
                           dtype=torch.float32)
    model.eval()
    return task, model, SequenceGenerator([model], task.target_dictionary, beam_size=2, max_len_b=5)


@pytest.mark.parametrize("variant", sorted(NODE_VARIANTS))
def test_scripting_a_node_model_says_it_is_not_supported(data_dir, variant):
    _, model, generator = model_and_generator(data_dir, *NODE_VARIANTS[variant])
    for obj in (model, generator):
        with pytest.raises(NotScriptableError) as e:
            torch.jit.script(obj)
        message = str(e.value)
        assert message.startswith("node_transformer: TorchScript is not supported for a model "
                                  "with a NODE side")
        assert "torchdiffeq" in message and "\n" not in message
    assert isinstance(e.value, RuntimeError)


def test_a_model_without_node_side_scripts_as_fairseqs(data_dir):
    task, model, generator = model_and_generator(data_dir)
    sample = batch(task, PAIRS)
    net_input = {k: sample["net_input"][k] for k in ("src_tokens", "src_lengths", "prev_output_tokens")}
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(**net_input)[0], model(**net_input)[0], atol=1e-6)
    scripted_generator = torch.jit.script(generator)
    eager = generator.generate([model], sample)
    hypos = scripted_generator._generate({"net_input": net_input})
    assert [h[0]["tokens"].tolist() for h in hypos] == [h[0]["tokens"].tolist() for h in eager]
