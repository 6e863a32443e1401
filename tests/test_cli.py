"""End to end with fairseq's own tools on the generated toy task:
fairseq-preprocess, fairseq-train (2 epochs), fairseq-generate, fairseq-interactive."""

import json
import os
import random
import re
import subprocess
import sys

import pytest

from fairseq_helpers import SIZES, USER_DIR, cli, toy_data_bin, train_argv
from fairseq_helpers import VARIANTS as STUDY_VARIANTS

ENV = {"OMP_NUM_THREADS": "1"}
N_TEST = 21  # not a multiple of 8: fairseq main would drop the last batch

VARIANTS = {
    **STUDY_VARIANTS,
    "prenorm-rk4-direct": ["--node-encoder", "--node-decoder", "--node-dynamics", "prenorm",
                           "--node-method", "rk4", "--node-steps", "2", "--node-backprop", "direct"],
    # the learned RK blocks: several per side, backprop through their few evaluations
    "rk2-gated-2layers": ["--node-encoder", "--node-decoder", "--node-dynamics", "prenorm",
                          "--node-block", "rk2-gated", "--encoder-layers", "2", "--decoder-layers", "2"],
    "pc4-separated": ["--node-encoder", "--node-decoder", "--node-separated-decoder",
                      "--node-dynamics", "prenorm", "--node-block", "pc", "--node-pc-order", "4"],
}
MODEL = [*SIZES["tiny"], "--share-all-embeddings", "--dropout", "0.1"]


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    return toy_data_bin(tmp_path_factory.mktemp("toy"), 300, 20, N_TEST, env=ENV)


def test_train_help_lists_the_node_flags_with_their_help():
    """fairseq parses once before adding the chosen --arch's flags, and --help acted then:
    the --node-* flags were missing from ``fairseq-train --arch node_transformer --help``."""
    proc = cli("fairseq-train", "--user-dir", USER_DIR, "--arch", "node_transformer",
               "--task", "node_translation", "--help", timeout=120)
    text = re.sub(r"\s+", " ", proc.stdout)
    assert "Model-specific configuration" in text
    assert "--node-rtol NODE_RTOL solver relative tolerance (default 0.01)" in text
    assert "--node-on-budget NODE_ON_BUDGET a training batch whose solve exceeds --node-max-nfe" in text
    assert "--encoder-embed-dim" in text  # fairseq's own model flags, with the plugin's

def train(data, save_dir, *flags, epochs=2):
    return cli("fairseq-train", *train_argv(
        data, save_dir, MODEL, *flags, lr=5e-3, max_tokens=400, epochs=epochs,
        log=("--log-format", "json", "--log-interval", "2",
             "--tensorboard-logdir", os.path.join(save_dir, "tb"))), env=ENV)


def log_records(proc, kind):
    """fairseq's json log lines of one kind ('train', 'valid', 'train_inner')."""
    out = []
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"\| (\w+) \| (\{.*\})$", line)
        if m and m.group(1) == kind:
            out.append(json.loads(m.group(2)))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_train_generate_interactive(data_bin, tmp_path, variant):
    data, raw = data_bin
    save = str(tmp_path / "ckpt")
    proc = train(data, save, *VARIANTS[variant])
    epochs = log_records(proc, "train")
    valid = log_records(proc, "valid")
    inner = log_records(proc, "train_inner")
    assert len(epochs) == 2 and len(valid) == 2 and inner
    assert float(epochs[1]["train_loss"]) < float(epochs[0]["train_loss"])
    assert float(valid[1]["valid_loss"]) < float(valid[0]["valid_loss"])
    sides = ["dec"] + (["enc"] if "--node-encoder" in VARIANTS[variant] else [])
    for side in sides:
        assert float(epochs[1][f"train_nfe_{side}_fwd"]) > 0
        # direct backprop (and a learned RK block's) evaluates nothing in the backward
        adjoint = "direct" not in variant and "--node-block" not in VARIANTS[variant]
        assert (float(epochs[1][f"train_nfe_{side}_bwd"]) > 0) == adjoint
        assert float(inner[-1][f"nfe_{side}_fwd"]) > 0  # train_inner keys carry no prefix
        assert float(valid[1][f"valid_nfe_{side}_fwd"]) > 0
    if "enc" not in sides:
        assert "train_nfe_enc_fwd" not in epochs[1]
    assert os.listdir(os.path.join(save, "tb", "train")), "no tensorboard events"

    ckpt = os.path.join(save, "checkpoint_best.pt")
    gen = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--task", "node_translation",
              "--path", ckpt, "--gen-subset", "test", "--beam", "3", "--batch-size", "8",
              "--max-len-b", "8", "--print-alignment", env=ENV)
    hyp_ids = sorted(int(m) for m in re.findall(r"^H-(\d+)\t", gen.stdout, re.M))
    assert hyp_ids == list(range(N_TEST))
    check_alignments(gen.stdout, N_TEST)
    # the decoder's evaluations are logged per batch, with a running total
    totals = [int(t) for t in re.findall(r"generation NFE of the decoder: [\d.]+ per sentence, "
                                          r"\d+ for this batch of \d+, (\d+) so far", gen.stderr + gen.stdout)]
    assert len(totals) == 3 and totals[0] > 0 and totals == sorted(totals)

    lines = open(os.path.join(raw, "test.src")).read().splitlines()[:5]
    inter = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "fairseq-interactive"), data,
         "--user-dir", USER_DIR, "--task", "node_translation", "--source-lang", "src",
         "--target-lang", "tgt", "--path", ckpt, "--beam", "2", "--buffer-size", "3",
         "--batch-size", "3", "--max-len-b", "8", "--print-alignment"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300,
        env=dict(os.environ, **ENV))
    assert inter.returncode == 0, inter.stderr[-2000:]
    assert len(re.findall(r"^H-\d+\t", inter.stdout, re.M)) == len(lines)
    check_alignments(inter.stdout, len(lines))


def check_alignments(stdout, sentences):
    """fairseq's hard alignment lines (A-i): one per hypothesis, source-target index pairs
    within the sentence's source (with its end of sentence) and hypothesis."""
    sources = {int(i): len(s.split()) for i, s in re.findall(r"^S-(\d+)\t(.*)$", stdout, re.M)}
    hyps = {int(i): len(h.split()) for i, h in re.findall(r"^H-(\d+)\t\S+\t(.*)$", stdout, re.M)}
    aligns = dict(re.findall(r"^A-(\d+)\t(.*)$", stdout, re.M))
    assert len(aligns) == sentences and set(map(int, aligns)) == set(hyps)
    for i, pairs in aligns.items():
        found = [tuple(map(int, p.split("-"))) for p in pairs.split()]
        assert found, f"empty alignment for sentence {i}"
        assert all(0 <= s <= sources[int(i)] and 0 <= t <= hyps[int(i)] for s, t in found)


def test_resume_loads_checkpoint_without_env_vars(data_bin, tmp_path):
    data, _ = data_bin
    save = str(tmp_path / "ckpt")
    train(data, save, *VARIANTS["separated"], epochs=1)
    env_flag = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    assert not env_flag, "the test must run without the weights_only escape hatch"
    proc = train(data, save, *VARIANTS["separated"], epochs=2)
    m = re.search(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates",
                  proc.stdout + proc.stderr)
    assert m and int(m.group(1)) > 0
    assert [int(r["epoch"]) for r in log_records(proc, "train")] == [2]


@pytest.mark.parametrize("flags, message", [
    (["--node-separated-decoder"], "--node-separated-decoder requires --node-decoder"),
    # 4 evaluations a step x 8 steps: every batch would be skipped, every epoch
    (["--node-encoder", "--node-method", "rk4", "--node-steps", "8", "--node-max-nfe", "16"],
     "--node-max-nfe 16 is below the 32 evaluations every solve with --node-method rk4, "
     "--node-steps 8 makes: no batch could pass it (0 = unbounded)"),
])
def test_impossible_flags_stop_with_one_line(data_bin, tmp_path, flags, message):
    data, _ = data_bin
    save = tmp_path / "ckpt"
    save.mkdir()
    (save / "keep.txt").write_text("written before")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "fairseq-train"), data, "--user-dir",
         USER_DIR, "--task", "node_translation", "--arch", "node_transformer", *MODEL,
         *flags, "--save-dir", str(save), "--max-epoch", "1",
         "--max-tokens", "400"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, **ENV))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]  # SystemExit's message goes to stderr
    assert last == "node_transformer: error: " + message
    assert "Traceback" not in proc.stderr
    assert (save / "keep.txt").read_text() == "written before"
    assert not any(p.suffix == ".pt" for p in save.iterdir())


def test_train_steps_are_drawn_per_update_and_validation_keeps_its_own(data_bin, tmp_path):
    """--node-train-steps through fairseq-train, beside kinetic energy: each update's
    solves (both sides) take the step count drawn for that update number, the same draw
    whatever process makes it (so on every worker); validation solves on --node-steps."""
    data, _ = data_bin
    save = str(tmp_path / "ckpt")
    proc = cli("fairseq-train", *train_argv(
        data, save, MODEL, "--node-encoder", "--node-decoder", "--node-dynamics", "prenorm",
        "--node-method", "euler", "--node-steps", "2", "--node-train-steps", "1 3",
        "--node-backprop", "direct", "--node-kinetic-energy", "0.01",
        lr=5e-3, max_tokens=400, epochs=2, log=("--log-format", "json", "--log-interval", "1")), env=ENV)
    inner = log_records(proc, "train_inner")
    assert len(inner) >= 6
    # kinetic energy beside it: its penalty is logged, the draw is unchanged
    assert all(float(r["rnode_kinetic"]) >= 0 for r in inner) and any(float(r["rnode_kinetic"]) > 0 for r in inner)
    drawn = [float(r["nfe_enc_fwd"]) for r in inner]
    assert drawn == [float(r["nfe_dec_fwd"]) for r in inner]
    expected = [float((1, 3)[random.Random(int(r["num_updates"]) - 1).randrange(2)]) for r in inner]
    assert drawn == expected and set(drawn) == {1.0, 3.0}
    assert {float(v["valid_nfe_enc_fwd"]) for v in log_records(proc, "valid")} == {2.0}
    # a setting of training only: no obstacle to another solver after training
    val = cli("fairseq-validate", data, "--user-dir", USER_DIR, "--task", "node_translation",
              "--path", os.path.join(save, "checkpoint_last.pt"), "--max-tokens", "400",
              "--model-overrides", "{'node_method': 'dopri5'}", env=ENV)
    out = val.stdout + val.stderr
    assert "left out --node-steps 2, --node-train-steps 1 3, which do not apply to it" in out, out[-2000:]
    assert re.search(r"valid on 'valid' subset \| loss \d", out), out[-2000:]


def test_train_steps_with_layerdrop_dropout_and_kinetic_energy(data_bin, tmp_path):
    """--node-train-steps beside LayerDrop (two blocks a side), dropout and kinetic energy, one
    epoch through fairseq-train: each side's evaluations are the drawn count times the blocks
    LayerDrop kept, and the penalty is logged."""
    data, _ = data_bin
    proc = cli("fairseq-train", *train_argv(
        data, str(tmp_path / "ckpt"), MODEL, "--node-encoder", "--node-decoder", "--node-dynamics",
        "prenorm", "--node-method", "euler", "--node-steps", "2", "--node-train-steps", "1 3",
        "--node-backprop", "direct", "--node-kinetic-energy", "0.01", "--encoder-layers", "2",
        "--decoder-layers", "2", "--encoder-layerdrop", "0.5", "--decoder-layerdrop", "0.5",
        lr=5e-3, max_tokens=400, epochs=1, log=("--log-format", "json", "--log-interval", "1")), env=ENV)
    inner = log_records(proc, "train_inner")
    assert len(inner) >= 4
    kept = set()
    for r in inner:
        steps = (1, 3)[random.Random(int(r["num_updates"]) - 1).randrange(2)]
        for side in ("enc", "dec"):
            nfe = float(r[f"nfe_{side}_fwd"])
            assert nfe % steps == 0 and 0 <= nfe / steps <= 2, (r["num_updates"], side, nfe, steps)
            kept.add(nfe / steps)
    assert len(kept) >= 2  # LayerDrop did drop blocks in some updates and not in others
    assert any(float(r["rnode_kinetic"]) > 0 for r in inner)


def test_budget_fallback_and_penalties_reach_the_logs(data_bin, tmp_path):
    # A budget too small for these dopri5 solves (the least it accepts): batches are solved
    # again with rk4, and counted.
    data, _ = data_bin
    proc = train(data, str(tmp_path / "ckpt"), "--node-encoder", "--node-decoder",
                 "--node-max-nfe", "8", "--node-on-budget", "fixed-step",
                 "--node-fallback-steps", "2", "--node-kinetic-energy", "0.01",
                 "--node-jacobian-norm", "0.01", "--node-steer-b", "0.2")
    epochs = log_records(proc, "train")
    assert len(epochs) == 2
    for e in epochs:
        assert int(float(e["train_node_fixed_step"])) > 0
        assert float(e["train_rnode_kinetic"]) > 0 and float(e["train_rnode_jacobian"]) > 0
    assert float(epochs[1]["train_loss"]) < float(epochs[0]["train_loss"])
    assert "valid_rnode_kinetic" not in log_records(proc, "valid")[0]
