"""node_transformer.from_pretrained: raw text in, translations and scores out, agreeing with
fairseq-generate on the same checkpoint (a tiny model trained here by fairseq-train)."""

import math
import os
import re

import pytest
import torch

import node_transformer
from fairseq_helpers import USER_DIR, cli
from toy_model import ENV, N_TEST, read, trained_run

GEN = {"max_len_b": 8}  # an under-trained model would babble up to fairseq's 200 tokens


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def hub(run):
    run_dir, data, _ = run
    # batch_size 1: each sentence solved alone, as in the fairseq-generate runs compared with
    return node_transformer.from_pretrained(os.path.join(run_dir, "checkpoints"),
                                            data_name_or_path=data, batch_size=1, device="cpu")


def generate(run, *flags):
    run_dir, data, _ = run
    proc = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--task", "node_translation",
               "--path", os.path.join(run_dir, "checkpoints", "checkpoint_best.pt"),
               "--gen-subset", "test", "--batch-size", "1", "--max-len-b", "8",
               "--remove-bpe", "sentencepiece", *flags, env=ENV)
    return proc.stdout


def lines_of(text, tag):
    """{sentence id: [fields after the id]} of fairseq-generate's lines of one tag (H, D)."""
    return {int(m.group(1)): m.group(2).split("\t")
            for m in re.finditer(rf"^{tag}-(\d+)\t(.*)$", text, re.M)}


def test_entry_point_is_the_hub_interface(hub):
    assert isinstance(hub, node_transformer.NODEHubInterface)
    assert not hub.training and hub.device.type == "cpu"
    assert hub.bpe is not None, "spm.model of the data-bin not picked up"


def test_translate_of_raw_text_matches_fairseq_generate(run, hub):
    _, _, raw = run
    sources = read(os.path.join(raw, "test.src"))
    assert len(sources) == N_TEST
    expected = lines_of(generate(run, "--beam", "3"), "D")
    assert sorted(expected) == list(range(N_TEST))
    assert hub.translate(sources, beam=3, **GEN) == [expected[i][-1] for i in range(N_TEST)]
    assert hub.translate(sources[3], beam=3, **GEN) == expected[3][-1]  # one string in, one out


def test_sample_passes_generation_options(run, hub):
    _, _, raw = run
    sources = read(os.path.join(raw, "test.src"))[:3]
    greedy = hub.translate(sources, beam=1, **GEN)
    # sampling from the top-1 token only is greedy decoding, through fairseq's sampler
    assert hub.sample(sources, beam=1, sampling=True, sampling_topk=1, **GEN) == greedy
    nbest = hub.generate([hub.encode(s) for s in sources], beam=3, nbest=3, **GEN)
    assert [len(h) for h in nbest] == [3, 3, 3]


def test_batches_keep_input_order(run):
    run_dir, data, raw = run
    hub = node_transformer.from_pretrained(os.path.join(run_dir, "checkpoints"),
                                           data_name_or_path=data, batch_size=4)
    # distinct lengths: a batch holds the same sentences whatever the input order
    by_len = {}
    for s in read(os.path.join(raw, "test.src")) + read(os.path.join(raw, "valid.src")):
        by_len.setdefault(len(s.split()), s)
    sources = [by_len[n] for n in sorted(by_len)]
    assert len(sources) >= 4
    forward = hub.translate(sources, beam=2, **GEN)
    backward = hub.translate(sources[::-1], beam=2, **GEN)
    assert len(forward) == len(sources) and all(isinstance(t, str) for t in forward)
    assert backward == forward[::-1]


def test_score_matches_fairseq_generate_score_reference(run, hub):
    _, _, raw = run
    sources, targets = read(os.path.join(raw, "test.src")), read(os.path.join(raw, "test.tgt"))
    out = generate(run, "--score-reference")
    expected_h, expected_p = lines_of(out, "H"), lines_of(out, "P")
    scores = hub.score(sources, targets)
    assert len(scores) == N_TEST
    for i, s in enumerate(scores):
        # fairseq-generate prints log-probabilities in base 2
        assert s["score"] / math.log(2) == pytest.approx(float(expected_h[i][0]), abs=1e-4)
        positional = [float(x) for x in expected_p[i][0].split()]
        assert (s["positional_scores"] / math.log(2)).tolist() == pytest.approx(positional, abs=1e-3)
        assert s["tokens"][-1] == hub.tgt_dict.eos()
        assert s["score"] == pytest.approx(float(s["positional_scores"].mean()), abs=1e-6)
    one = hub.score(sources[0], targets[0])
    assert one["score"] == pytest.approx(scores[0]["score"], abs=1e-6)


def test_score_needs_pairs(hub):
    with pytest.raises(TypeError, match="pass the target sentences"):
        hub.score(["wa0 wb0"])
    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        hub.score(["wa0", "wb0"], ["WA0x"])


def test_solver_settings_can_be_overridden_at_load(run):
    run_dir, data, raw = run
    tight = node_transformer.from_pretrained(os.path.join(run_dir, "checkpoints"),
                                             data_name_or_path=data, node_rtol=1e-5,
                                             node_atol=1e-5)
    blocks = [m for m in tight.models[0].modules()
              if isinstance(m, node_transformer.ode_block.ODEBlock)]
    assert blocks and all(b.solver.rtol == 1e-5 for b in blocks)
    assert len(tight.translate(read(os.path.join(raw, "test.src"))[:2], beam=2, **GEN)) == 2


def test_bad_directories_are_named(run, tmp_path):
    run_dir, _, _ = run
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        node_transformer.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no model.pt / checkpoint_best.pt"):
        node_transformer.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pass data_name_or_path=DATA_BIN"):
        node_transformer.from_pretrained(os.path.join(run_dir, "checkpoints"))
    with pytest.raises(FileNotFoundError, match="data_name_or_path .* is not a directory"):
        node_transformer.from_pretrained(os.path.join(run_dir, "checkpoints"),
                                         data_name_or_path=str(tmp_path / "no-data"))
    with pytest.raises(FileNotFoundError, match="other.pt not found"):
        node_transformer.from_pretrained(os.path.join(run_dir, "checkpoints"), "other.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_by_default_when_present(run, hub):
    run_dir, data, raw = run
    gpu = node_transformer.from_pretrained(os.path.join(run_dir, "checkpoints"),
                                           data_name_or_path=data, batch_size=1)
    assert gpu.device.type == "cuda"
    sources, targets = read(os.path.join(raw, "test.src")), read(os.path.join(raw, "test.tgt"))
    assert len(gpu.translate(sources, beam=3, **GEN)) == N_TEST
    on_gpu = [s["score"] for s in gpu.score(sources, targets)]
    on_cpu = [s["score"] for s in hub.score(sources, targets)]
    assert on_gpu == pytest.approx(on_cpu, abs=1e-3)
