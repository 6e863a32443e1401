"""Cached (incremental) NODE decoding equals recomputing the prefix, in-process.

The decoder is stepped one target position at a time with fairseq's incremental_state, with
a beam reorder in the middle, and compared with one teacher-forced pass (float64, 1e-9); then
fairseq's SequenceGenerator runs with the cache and with recomputation (beam, sampling,
prefix tokens, a batch whose sentences end at different steps). The same through
fairseq-generate is in test_decoding_cli.py.
"""

import argparse
import logging

import pytest
import torch
import torch.nn.functional as F
from fairseq import utils as fairseq_utils

from fairseq_helpers import batch, build, write_dicts
from node_transformer.incremental import APPROXIMATE_NOTE, StageCache, decoding_mode

PAIRS = [("w1 w2 w3 w4", "w5 w6 w7 w8 w9"), ("w3 w2", "w8 w9 w10 w11 w4"), ("w7", "w1 w2 w3 w4 w5")]
PRENORM = ["--node-dynamics", "prenorm", "--node-output-init", "xavier"]

# (name, flags, cached?) -- every one must equal the full recomputation.
CASES = {
    "full-study-rk4": (["--node-decoder", "--node-method", "rk4", "--node-steps", "2"], True),
    "full-prenorm-midpoint": (["--node-decoder", *PRENORM, "--node-method", "midpoint",
                               "--node-steps", "1"], True),
    "full-euler-ts-grid": (["--node-decoder", "--node-method", "euler", "--node-ts", "0 0.3 1"], True),
    "full-heun3": (["--node-decoder", "--node-method", "heun3", "--node-steps", "2"], True),
    "full-heun2-2layers": (["--node-decoder", "--decoder-layers", "2", "--node-method", "heun2",
                            "--node-steps", "1"], True),
    "full-aug-time-rk4": (["--node-encoder", "--node-decoder", "--node-augment-dims", "1",
                           "--node-time-dependent", "--node-method", "rk4", "--node-steps", "2"], True),
    "separated-aug-time-rk4": (["--node-decoder", "--node-separated-decoder", "--node-augment-dims",
                                "1", "--node-time-dependent", "--node-method", "rk4",
                                "--node-steps", "3"], True),
    "separated-prenorm-midpoint": (["--node-decoder", "--node-separated-decoder", *PRENORM,
                                    "--node-method", "midpoint", "--node-steps", "1"], True),
    # Adaptive steps depend on the prefix solved: they agree to the solver's tolerance only.
    "full-dopri5": (["--node-decoder", "--node-rtol", "1e-8", "--node-atol", "1e-8",
                     "--node-max-nfe", "0"], False),
    "full-explicit-adams": (["--node-decoder", "--node-method", "explicit_adams",
                             "--node-steps", "2"], False),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def model_for(data_dir, flags, dtype=torch.float64):
    torch.manual_seed(0)
    task, model, args = build(data_dir, "--encoder-layers", "1", *flags, dtype=dtype)
    model.eval()
    return task, model, args


def step_by_step(model, src, prev, reorder_at=None, new_order=None):
    """Decoder outputs for each position, one position per call, as generation calls it;
    at step ``reorder_at`` the batch is reordered by ``new_order`` (like a beam)."""
    enc = model.encoder(src["src_tokens"], src["src_lengths"])
    state, outs = {}, []
    for i in range(prev.size(1)):
        if i == reorder_at:
            model.decoder.reorder_incremental_state_scripting(state, new_order)
            enc = model.encoder.reorder_encoder_out(enc, new_order)
            prev = prev.index_select(0, new_order)
            outs = [o.index_select(0, new_order) for o in outs]
        out, _ = model.decoder(prev[:, : i + 1], encoder_out=enc, incremental_state=state)
        assert out.size(1) == 1
        outs.append(out[:, 0])
    return torch.stack(outs, dim=1), prev, state


@pytest.fixture
def float64_softmax(monkeypatch):
    """fairseq's attention takes its softmax in float32 on the incremental path (not on the
    full-sequence path): for a float64 comparison both must stay in float64."""
    monkeypatch.setattr(fairseq_utils, "softmax", lambda x, dim, onnx_trace=False: F.softmax(x, dim=dim))


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_by_step_equals_teacher_forcing(data_dir, case, float64_softmax):
    flags, cached = CASES[case]
    task, model, _ = model_for(data_dir, flags)
    assert model.decoder.cached_decoding() == cached
    sample = batch(task, PAIRS)
    src, prev = sample["net_input"], sample["net_input"]["prev_output_tokens"]
    # A beam-like reorder: rows duplicated and permuted, so cached rows must follow theirs.
    new_order = torch.tensor([2, 0, 0, 1, 2])
    with torch.no_grad():
        steps, prev2, state = step_by_step(model, src, prev, reorder_at=3, new_order=new_order)
        src2 = {"src_tokens": src["src_tokens"][new_order], "src_lengths": src["src_lengths"][new_order]}
        full, _ = model(src2["src_tokens"], src2["src_lengths"], prev2)
    # Targets are right-padded: positions after a row's end see pad tokens; compare where
    # the prefix is real (fairseq never decodes past a finished hypothesis).
    real = prev2.ne(task.target_dictionary.pad())
    tol = 1e-5 if "dopri5" in case else 1e-9
    torch.testing.assert_close(steps[real], full[real], rtol=0, atol=tol)
    layer = model.decoder.layers[0]
    cache = layer.get_incremental_state(state, "stages")
    if cached and layer.self_attn is None:  # one attention state per evaluation of a solve
        assert isinstance(cache, StageCache) and len(cache.states) == cache.evaluations > 0
    else:
        assert cache is None


def test_cached_step_evaluates_the_grid_once_per_position(data_dir):
    """rk4 on 2 steps: 8 evaluations per generation step, each over one position."""
    task, model, _ = model_for(data_dir, CASES["full-study-rk4"][0])
    sample = batch(task, PAIRS)
    src, prev = sample["net_input"], sample["net_input"]["prev_output_tokens"]
    block = model.decoder.layers[0].block
    seen = []
    block.dynamics.register_forward_hook(lambda m, args, out: seen.append(out.size(0)))
    model.decoder.generation_nfe.reset()
    with torch.no_grad():
        step_by_step(model, src, prev)
    assert seen == [1] * (8 * prev.size(1))
    assert model.decoder.generation_nfe.total == 8 * prev.size(1)
    assert model.decoder.generation_nfe.rows == 8 * prev.size(1) * len(PAIRS)
    assert model.decoder.generation_nfe.per_sentence(len(PAIRS), beam=1) == 8 * prev.size(1)


def test_recompute_setting_and_adaptive_solvers_recompute_the_prefix(data_dir):
    task, model, _ = model_for(data_dir, CASES["full-study-rk4"][0])
    model.decoder.decoding = "recompute"
    assert not model.decoder.cached_decoding()
    sample = batch(task, PAIRS)
    src, prev = sample["net_input"], sample["net_input"]["prev_output_tokens"]
    seen = []
    model.decoder.layers[0].block.dynamics.register_forward_hook(lambda m, a, out: seen.append(out.size(0)))
    with torch.no_grad():
        step_by_step(model, src, prev)
    assert seen == [n for n in range(1, prev.size(1) + 1) for _ in range(8)]
    # A layer that cannot be cached refuses an incremental state instead of decoding wrongly.
    _, adaptive, _ = model_for(data_dir, CASES["full-dopri5"][0])
    layer = adaptive.decoder.layers[0]
    x = torch.zeros(1, 1, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot decode incrementally"):
        layer(x, torch.zeros(2, 1, 8, dtype=torch.float64), None, incremental_state={})


def test_bad_decoding_setting_is_named():
    assert decoding_mode(argparse.Namespace()) == "auto"
    assert decoding_mode(argparse.Namespace(node_decoding="recompute")) == "recompute"
    assert decoding_mode(argparse.Namespace(node_decoding="exact")) == "exact"
    with pytest.raises(ValueError, match="node_decoding must be one of auto, exact, recompute, got 'cache'"):
        decoding_mode(argparse.Namespace(node_decoding="cache"))


# Config 07's decoder: separated, dopri5 at tolerance 1e-2.
SEPARATED_DOPRI5 = ["--node-decoder", "--node-separated-decoder", "--node-max-nfe", "0"]
SEPARATED_FIXED = {  # fixed-grid methods without an error norm: the separated cache is exact
    "separated-euler": ["--node-decoder", "--node-separated-decoder", "--node-method", "euler",
                        "--node-steps", "3"],
    "separated-explicit-adams": ["--node-decoder", "--node-separated-decoder", "--node-method",
                                 "explicit_adams", "--node-steps", "3"],
}


def decode_both(model, task, modes):
    """Step-by-step decoder outputs at the real positions, one tensor per decoding mode."""
    sample = batch(task, PAIRS)
    src, prev = sample["net_input"], sample["net_input"]["prev_output_tokens"]
    real = prev.ne(task.target_dictionary.pad())
    outs, cached = [], []
    for mode in modes:
        model.decoder.decoding = mode
        cached.append(model.decoder.cached_decoding())
        with torch.no_grad():
            outs.append(step_by_step(model, src, prev)[0][real])
    return outs, cached


def prefix_forwards(model, task):
    """The reference a recomputing step must equal, by another route than generation's: the
    model's teacher-forced forward (no incremental state) on each prefix, its last position."""
    sample = batch(task, PAIRS)
    src, prev = sample["net_input"], sample["net_input"]["prev_output_tokens"]
    real = prev.ne(task.target_dictionary.pad())
    with torch.no_grad():
        last = [model(src["src_tokens"], src["src_lengths"], prev[:, : i + 1])[0][:, -1]
                for i in range(prev.size(1))]
    return torch.stack(last, dim=1)[real]


@pytest.mark.parametrize("case", sorted(CASES) + sorted(SEPARATED_FIXED) + ["separated-dopri5"])
def test_exact_decoding_equals_recomputation(data_dir, case, float64_softmax):
    """node_decoding 'exact' caches wherever that is exact, and only there: every step equals
    re-solving the prefix (float64, 1e-9). The separated decoder with an adaptive solver is
    not exact (see the next test): it recomputes."""
    if case in CASES:
        flags, cacheable = CASES[case]
    else:
        flags, cacheable = SEPARATED_FIXED.get(case, SEPARATED_DOPRI5), case != "separated-dopri5"
    task, model, _ = model_for(data_dir, flags)
    (exact, recomputed), (cached, _) = decode_both(model, task, ["exact", "recompute"])
    assert cached == cacheable and model.decoder.cache_exact() == cacheable
    # Where neither mode caches, both run the same code: only the reference can tell.
    reference = prefix_forwards(model, task)
    torch.testing.assert_close(recomputed, reference, rtol=0, atol=1e-9)
    torch.testing.assert_close(exact, reference, rtol=0, atol=1e-9)


def test_auto_caches_the_separated_adaptive_decoder_approximately_and_says_so(
        data_dir, float64_softmax, caplog):
    """auto keeps config 07's fast cached path, whose positions each get their own adaptive
    steps: it differs from recomputation by about the solver's tolerance, and its log line
    says it is approximate, quoting the measurement."""
    task, model, _ = model_for(data_dir, SEPARATED_DOPRI5)
    with caplog.at_level(logging.INFO, logger="node_transformer.decoder"):
        (auto, recomputed), cached = decode_both(model, task, ["auto", "recompute"])
    assert cached == [True, False] and not model.decoder.cache_exact()
    gap = float((auto - recomputed).abs().max())
    assert 1e-6 < gap < 0.1, gap
    lines = [r.getMessage() for r in caplog.records if r.name == "node_transformer.decoder"]
    assert lines[0] == ("NODE decoder (dopri5): each generation step solves the newest position "
                        "only (cached, " + APPROXIMATE_NOTE + ")")
    assert "measured on config 07 test2016: 99.1% identical hypotheses, same BLEU" in lines[0]
    assert lines[1] == "NODE decoder (dopri5): each generation step recomputes the whole prefix"


def test_stage_cache_refuses_a_changed_number_of_evaluations():
    cache = StageCache()
    cache.begin()
    cache.next_state(), cache.next_state()
    cache.end()
    cache.begin()
    cache.next_state()
    with pytest.raises(RuntimeError, match="made 1 evaluations, the first one 2"):
        cache.end()
    cache.begin()
    cache.next_state(), cache.next_state()
    with pytest.raises(RuntimeError, match="more than the first solve's 2"):
        cache.next_state()


EOS_OFFSET = 5.0  # with it, hypotheses end at different lengths (checked below, not assumed)
GEN_CASES = ["full-study-rk4", "full-aug-time-rk4", "separated-aug-time-rk4", "full-prenorm-midpoint"]
SOURCES = ["w1 w2 w3 w4", "w3 w2", "w7", "w5 w6 w1 w9 w10 w2", "w4 w4"]


@pytest.mark.parametrize("case", GEN_CASES)
@pytest.mark.parametrize("mode", ["beam5", "sampling", "prefix"])
def test_sequence_generator_cached_equals_recomputed(data_dir, case, mode):
    check_generation(data_dir, case, mode, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ["full-prenorm-midpoint", "separated-aug-time-rk4"])
def test_sequence_generator_cached_equals_recomputed_on_cuda(data_dir, case):
    check_generation(data_dir, case, "beam5", torch.device("cuda"))


def check_generation(data_dir, case, mode, device):
    task, model, args = model_for(data_dir, CASES[case][0], dtype=torch.float32)
    model.to(device)
    # Untrained models rarely stop: make EOS win where the decoder's first feature is
    # positive, so that hypotheses and sentences end at different steps.
    eos = task.target_dictionary.eos()

    rows = set()  # batch sizes seen: the batch shrinks as sentences finish

    def likely_eos(module, inputs, out):
        rows.add(out.size(0))
        out = out.clone()
        out[..., eos] = out.max(dim=-1).values + 20 * inputs[0][..., 0] + EOS_OFFSET
        return out

    model.decoder.output_projection.register_forward_hook(likely_eos)
    sample = batch(task, [(s, "w1") for s in SOURCES])
    sample["net_input"] = {k: v.to(device) for k, v in sample["net_input"].items()}
    opts = dict(beam=5, max_len_a=0, max_len_b=10, min_len=2)
    prefix = None
    if mode == "sampling":
        opts.update(sampling=True, beam=3, sampling_topk=-1, sampling_topp=-1.0)
    if mode == "prefix":
        prefix = torch.tensor([[5, 6]] * len(SOURCES), device=device)
    args.prefix_size = 2 if prefix is not None else 0
    runs = []
    for cached in (True, False):
        model.decoder.decoding = "auto" if cached else "recompute"
        for k, v in opts.items():
            setattr(args, k, v)
        gen = task.build_generator([model], args)
        torch.manual_seed(1)
        with torch.no_grad():
            runs.append(task.inference_step(gen, [model], sample, prefix_tokens=prefix))
    cached_hyps, full_hyps = runs
    lengths = set()
    for a, b in zip(cached_hyps, full_hyps):
        assert len(a) == len(b) == opts["beam"]
        for ha, hb in zip(a, b):
            assert torch.equal(ha["tokens"], hb["tokens"])
            torch.testing.assert_close(ha["positional_scores"], hb["positional_scores"], rtol=0, atol=1e-5)
            torch.testing.assert_close(ha["score"], hb["score"], rtol=0, atol=1e-5)
            lengths.add(len(ha["tokens"]))
        if prefix is not None:
            assert a[0]["tokens"][:2].tolist() == [5, 6]
    assert len(lengths) > 1, "every hypothesis has the same length: the test would miss reorders"
    assert len(rows) > 1, "no sentence finished before the others: the batch never shrank"
