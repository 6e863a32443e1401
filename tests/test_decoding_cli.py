"""Cached NODE decoding through fairseq-generate: the same hypotheses and scores as
recomputing the prefix (``--model-overrides "{'node_decoding': 'recompute'}"``), with beam 5,
sampling and --prefix-size; an adaptive full NODE decoder recomputes, and decodes cached on a
fixed grid chosen with --model-overrides. Tiny models trained for a few epochs on the toy task.
"""

import math
import os
import re
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils

from fairseq_helpers import ROOT, USER_DIR, cli

ENV = {"OMP_NUM_THREADS": "1"}
MODEL = [
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings", "--dropout", "0.1",
]
TRAINED = {
    # the benchmark's project-best: full NODE, pre-norm, one midpoint step
    "project-best": ["--node-encoder", "--node-decoder", "--node-dynamics", "prenorm",
                     "--node-output-init", "xavier", "--node-method", "midpoint", "--node-steps", "1",
                     "--node-backprop", "direct"],
    # an augmented, time-dependent full NODE decoder trained with an adaptive solver
    "aug-time-dopri5": ["--node-decoder", "--encoder-layers", "1", "--node-augment-dims", "1",
                        "--node-time-dependent", "--node-backprop", "direct"],
    # config 07's form: separated decoder, augmented, dopri5
    "separated-aug": ["--node-decoder", "--node-separated-decoder", "--encoder-layers", "1",
                      "--node-augment-dims", "1", "--node-backprop", "direct"],
}
MODES = {
    "beam5": ["--beam", "5", "--nbest", "5"],
    "sampling": ["--sampling", "--beam", "3", "--nbest", "3", "--seed", "7"],
    "prefix": ["--beam", "5", "--nbest", "5", "--prefix-size", "1"],
}
CACHED = "solves the newest position only (cached)"
RECOMPUTED = "recomputes the whole prefix"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    raw, out = root / "raw", root / "bin"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_toy_data.py"), str(raw),
                    "--train", "2000", "--valid", "20", "--test", "21", "--max-len", "6"],
                   check=True, capture_output=True)
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
        "--trainpref", str(raw / "train"), "--validpref", str(raw / "valid"),
        "--testpref", str(raw / "test"), "--destdir", str(out), "--workers", "1", env=ENV)
    return str(out), root


_checkpoints = {}


def checkpoint(data, name):
    """Trained once per module, on first use."""
    if name not in _checkpoints:
        data_bin, root = data
        save = str(root / name)
        cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--task", "node_translation",
            "--arch", "node_transformer", *MODEL, *TRAINED[name], "--optimizer", "adam",
            "--lr", "5e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--max-tokens", "400", "--max-epoch", "6", "--save-dir", save,  # 2000 pairs: hypotheses of 1-8 words
            "--no-epoch-checkpoints", "--no-last-checkpoints", "--num-workers", "0", "--seed", "1",
            env=ENV)
        _checkpoints[name] = os.path.join(save, "checkpoint_best.pt")
    return _checkpoints[name]


def generate(data, ckpt, *flags, overrides=None):
    """{sentence id: [(tokens, score, positional scores), ...]} and fairseq's stderr."""
    extra = ["--model-overrides", repr(overrides)] if overrides else []
    proc = cli("fairseq-generate", data[0], "--user-dir", USER_DIR, "--task", "node_translation",
               "--path", ckpt, "--gen-subset", "test", "--batch-size", "8", "--max-len-b", "8",
               *flags, *extra, env=ENV)
    hyps, last = {}, None
    for line in proc.stdout.splitlines():
        m = re.match(r"^H-(\d+)\t(\S+)\t(.*)$", line)
        if m:
            last = (int(m.group(1)), m.group(3), float(m.group(2)))
            continue
        m = re.match(r"^P-(\d+)\t(.*)$", line)
        if m:
            assert last is not None and last[0] == int(m.group(1))
            hyps.setdefault(last[0], []).append((last[1], last[2], [float(v) for v in m.group(2).split()]))
    return hyps, proc.stderr


def assert_same(cached, recomputed):
    """Same hypotheses, scores equal to float32 rounding: the two attention code paths
    (one position against the cache, or the whole prefix with a causal mask) round
    differently in the last bits; fairseq prints positional scores to 4 decimals."""
    assert cached.keys() == recomputed.keys() and len(cached) == 21
    for sid in cached:
        assert [h[0] for h in cached[sid]] == [h[0] for h in recomputed[sid]], f"sentence {sid}"
        for a, b in zip(cached[sid], recomputed[sid]):
            assert a[1] == pytest.approx(b[1], abs=1e-5)
            assert a[2] == pytest.approx(b[2], abs=2e-4)


# Greedy, one sentence at a time: no other row shares a recomputing step's adaptive solve, so
# its scores are those of the model's teacher-forced forward on each prefix.
ALONE = ["--beam", "1", "--batch-size", "1"]


def teacher_forced_gap(data, ckpt, hyps):
    """Largest gap between fairseq-generate's positional scores (base 2) of each sentence's
    first hypothesis and the checkpoint's teacher-forced forward, computed in-process, on
    each prefix of that hypothesis (the score of its last position): the reference a
    recomputing decoder must equal, reached without generation's code."""
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt], arg_overrides={"data": data[0]})
    model, d = models[0].eval(), task.target_dictionary
    sources = open(os.path.join(data[1], "raw", "test.src")).read().splitlines()
    gap = 0.0
    for sid, nbest in hyps.items():
        src = task.source_dictionary.encode_line(sources[sid], add_if_not_exist=False).long()[None]
        tgt = d.encode_line(nbest[0][0], add_if_not_exist=False).long()  # the hypothesis + eos
        prev = torch.cat([tgt.new_tensor([d.eos()]), tgt[:-1]])[None]
        with torch.no_grad():
            scores = [model.get_normalized_probs(model(src, torch.tensor([src.size(1)]), prev[:, : i + 1]),
                                                 log_probs=True)[0, -1, tgt[i]] / math.log(2)
                      for i in range(tgt.numel())]
        gap = max(gap, max(abs(float(a) - b) for a, b in zip(scores, nbest[0][2], strict=True)))
    return gap


def lengths(hyps):
    return {len(h[0].split()) for nbest in hyps.values() for h in nbest}


def check_cached_equals_recomputed(data, name, mode, overrides=None):
    ckpt = checkpoint(data, name)
    cached, log = generate(data, ckpt, *MODES[mode], overrides=overrides)
    assert CACHED in log and RECOMPUTED not in log
    recomputed, log = generate(data, ckpt, *MODES[mode],
                               overrides={**(overrides or {}), "node_decoding": "recompute"})
    assert RECOMPUTED in log and CACHED not in log
    assert_same(cached, recomputed)
    # Hypotheses of several lengths: beams and sentences finished at different steps.
    assert len(lengths(cached)) > 1
    return cached


def test_project_best_generate_cached_equals_recomputed(data):
    check_cached_equals_recomputed(data, "project-best", "beam5")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sampling", "prefix"])
def test_project_best_sampling_and_prefix(data, mode):
    hyps = check_cached_equals_recomputed(data, "project-best", mode)
    if mode == "prefix":
        first = open(os.path.join(data[1], "raw", "test.tgt")).read().splitlines()
        # fairseq orders test sentences by length, ids are the raw file's line numbers
        assert all(h[0].split()[0] == first[sid].split()[0] for sid, nb in hyps.items() for h in nb)


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_adaptive_full_decoder_recomputes_and_fixed_grid_override_is_cached(data, mode):
    overrides = {"node_method": "rk4", "node_steps": 4}
    if mode == "beam5":  # trained with dopri5: generation recomputes the prefix by default
        ckpt = checkpoint(data, "aug-time-dopri5")
        _, log = generate(data, ckpt, *MODES[mode])
        assert "NODE decoder (dopri5): each generation step " + RECOMPUTED in log
        hyps, _ = generate(data, ckpt, *ALONE)
        assert len(hyps) == 21 and teacher_forced_gap(data, ckpt, hyps) < 2e-4
    check_cached_equals_recomputed(data, "aug-time-dopri5", mode, overrides)


APPROXIMATE = ("solves the newest position only (cached, approximate: each position gets its "
               "own adaptive steps; measured on config 07 test2016: 99.1% identical hypotheses, "
               "same BLEU")


@pytest.mark.slow
def test_separated_decoder_is_cached_with_any_solver(data):
    ckpt = checkpoint(data, "separated-aug")
    _, log = generate(data, ckpt, *MODES["beam5"])
    assert "NODE decoder (dopri5): each generation step " + APPROXIMATE in log
    # On a fixed grid the cached output is the recomputed one.
    check_cached_equals_recomputed(data, "separated-aug", "beam5", {"node_method": "rk4", "node_steps": 2})


def test_fixed_grid_override_of_a_model_trained_with_a_first_step(data, tmp_path):
    """A model trained with an adaptive-only setting (--node-first-step) decodes on a fixed
    grid: the setting, which the grid does not take, is left out with a log line naming it
    (it used to stop fairseq-generate unless the overrides cleared it too); cleared by hand,
    no line."""
    save = str(tmp_path / "heun")
    cli("fairseq-train", data[0], "--user-dir", USER_DIR, "--task", "node_translation",
        "--arch", "node_transformer", *MODEL, "--node-encoder", "--node-decoder",
        "--node-dynamics", "prenorm", "--node-method", "adaptive_heun", "--node-rtol", "0.1",
        "--node-atol", "0.1", "--node-first-step", "1.0", "--node-backprop", "direct",
        "--optimizer", "adam", "--lr", "5e-3", "--max-tokens", "400", "--max-update", "20",
        "--save-dir", save, "--no-epoch-checkpoints", "--no-last-checkpoints",
        "--num-workers", "0", "--seed", "1", env=ENV)
    ckpt = os.path.join(save, "checkpoint_best.pt")
    grid = {"node_method": "heun2", "node_steps": 5}
    proc = cli("fairseq-generate", data[0], "--user-dir", USER_DIR, "--task", "node_translation",
               "--path", ckpt, "--gen-subset", "test", "--batch-size", "8", "--max-len-b", "8",
               "--model-overrides", repr(grid), env=ENV, check=False)
    assert proc.returncode == 0 and len(re.findall(r"^H-", proc.stdout, re.M)) == 21
    assert ("solving with --node-method heun2: left out --node-first-step 1.0, which does not "
            "apply to it") in proc.stderr
    hyps, log = generate(data, ckpt, "--beam", "5", overrides={**grid, "node_first_step": None})
    assert "NODE decoder (heun2, 5 steps): each generation step " + CACHED in log
    assert "left out" not in log
    assert len(hyps) == 21



def briefly_trained_separated(data):
    """Config 07's form (separated decoder, dopri5) after 20 updates, trained once."""
    if "separated-20" not in _checkpoints:
        save = str(data[1] / "separated-20")
        cli("fairseq-train", data[0], "--user-dir", USER_DIR, "--task", "node_translation",
            "--arch", "node_transformer", *MODEL, *TRAINED["separated-aug"], "--optimizer", "adam",
            "--lr", "5e-3", "--max-tokens", "400", "--max-update", "20", "--save-dir", save,
            "--no-epoch-checkpoints", "--no-last-checkpoints", "--num-workers", "0", "--seed", "1",
            env=ENV)
        _checkpoints["separated-20"] = os.path.join(save, "checkpoint_best.pt")
    return _checkpoints["separated-20"]


def test_separated_adaptive_decoder_auto_says_approximate_and_exact_recomputes(data):
    """fairseq-generate's default (auto) decodes config 07's form on the cached path and says
    once that it is approximate, quoting the measurement; 'exact' recomputes the prefix."""
    ckpt = briefly_trained_separated(data)
    auto, log = generate(data, ckpt, "--beam", "2")
    assert log.count("NODE decoder (dopri5): each generation step " + APPROXIMATE) == 1
    assert RECOMPUTED not in log and len(auto) == 21
    _, log = generate(data, ckpt, "--beam", "2", overrides={"node_decoding": "exact"})
    assert "NODE decoder (dopri5): each generation step " + RECOMPUTED in log
    assert "approximate" not in log and CACHED not in log


@pytest.mark.slow
def test_exact_decoding_of_the_separated_adaptive_decoder_equals_recompute(data):
    """'exact' and 'recompute' re-solve the prefix, so their scores are the teacher-forced
    forward's on each prefix (checked in-process, one sentence at a time); auto's cached
    scores are not, so the check can tell. On a fixed grid 'exact' caches."""
    ckpt = checkpoint(data, "separated-aug")  # trained to hypotheses of several words
    for mode in ("exact", "recompute"):
        hyps, log = generate(data, ckpt, *ALONE, overrides={"node_decoding": mode})
        assert "NODE decoder (dopri5): each generation step " + RECOMPUTED in log and CACHED not in log
        assert len(hyps) == 21 and teacher_forced_gap(data, ckpt, hyps) < 2e-4, mode
    auto, log = generate(data, ckpt, *ALONE)
    assert APPROXIMATE in log and teacher_forced_gap(data, ckpt, auto) > 1e-3
    _, log = generate(data, ckpt, *MODES["beam5"], overrides={"node_decoding": "exact",
                                                              "node_method": "rk4", "node_steps": 2})
    assert "NODE decoder (rk4, 2 steps): each generation step " + CACHED in log


def score_reference_gaps(data, ckpt, hyps, tmp_path, overrides=None):
    """fairseq-generate --score-reference (teacher-forced, one sentence at a time) on each
    sentence's first hypothesis: |generation's positional score - its teacher-forced one|
    over all tokens, base 2."""
    raw, bin_dir = tmp_path / "raw", tmp_path / "bin"
    raw.mkdir(parents=True)
    sources = open(os.path.join(data[1], "raw", "test.src")).read().splitlines()
    ids = sorted(hyps)
    (raw / "hyp.src").write_text("".join(sources[i] + "\n" for i in ids))
    (raw / "hyp.tgt").write_text("".join(hyps[i][0][0] + "\n" for i in ids))
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--srcdict", os.path.join(data[0], "dict.src.txt"), "--tgtdict", os.path.join(data[0], "dict.tgt.txt"),
        "--testpref", str(raw / "hyp"), "--destdir", str(bin_dir), "--workers", "1", env=ENV)
    scored, _ = generate((str(bin_dir), data[1]), ckpt, "--score-reference", "--batch-size", "1",
                         overrides=overrides)
    return [abs(a - b) for k, i in enumerate(ids)
            for a, b in zip(hyps[i][0][2], scored[k][0][2], strict=True)]


@pytest.mark.slow
def test_adaptive_generation_scores_differ_from_teacher_forced_ones_within_tolerance(data, tmp_path):
    """docs/decoding.md: with dopri5 the scores fairseq-generate prints for a hypothesis are
    not its teacher-forced scores (--score-reference, training), only close: each generation
    step solves the prefix, scoring solves the whole sentence at once, and the adaptive steps
    depend on which positions are solved together. On a fixed grid they agree to printing."""
    ckpt = checkpoint(data, "aug-time-dopri5")  # full NODE, dopri5 at tolerance 1e-2
    hyps, _ = generate(data, ckpt, "--beam", "5")
    gaps = score_reference_gaps(data, ckpt, hyps, tmp_path / "dopri5")
    print(f"dopri5: {len(gaps)} tokens, max gap {max(gaps):.4f}, mean {sum(gaps) / len(gaps):.5f} bits")
    assert 1e-3 < max(gaps) < 0.1
    grid = {"node_method": "rk4", "node_steps": 4}
    hyps, _ = generate(data, ckpt, "--beam", "5", overrides=grid)
    gaps = score_reference_gaps(data, ckpt, hyps, tmp_path / "rk4", overrides=grid)
    print(f"rk4 x 4: {len(gaps)} tokens, max gap {max(gaps):.4f} bits")
    assert max(gaps) <= 2e-4
