"""Training as users run it, one step off the happy path: budgets that fire inside
fairseq-train (training and validation, --update-freq 2), two workers, padding, reduced
precision, and fairseq-generate without --task."""

import math
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from fairseq_helpers import ROOT, USER_DIR, batch, build, cli, train_argv, write_dicts
from node_transformer.ode_block import ODEBlock
from test_cli import MODEL, N_TEST, data_bin, log_records  # noqa: F401  (data_bin: fixture)

ENV = {"OMP_NUM_THREADS": "1"}
NODE = ["--node-encoder", "--node-decoder"]


def train_args(data, save_dir, *flags, epochs=1):
    return train_argv(data, save_dir, MODEL, "--dropout", "0.0", *flags, "--warmup-init-lr", "1e-4",
                      lr=5e-3, max_tokens=400, epochs=epochs,
                      log=("--log-format", "json", "--log-interval", "1"))


def total(records, key):
    return sum(float(r.get(key, 0)) for r in records)


# Budgets on the toy task with 16-dim models at init: dopri5 takes 20 encoder / 14 decoder
# forward evaluations, more in the adjoint backward. 18 fires in every forward (training and
# validation); 26 lets forwards pass and fires in the backward of some batches.
@pytest.mark.parametrize("policy, budget, epochs, fired", [
    ("skip", "26", 1, "node_skipped"),
    ("fixed-step", "18", 1, "node_fixed_step"),
    ("defer", "26", 2, "node_deferred"),
])
def test_budget_policies_through_fairseq_train(data_bin, tmp_path, policy, budget, epochs, fired):
    data, _ = data_bin
    proc = cli("fairseq-train", *train_args(data, str(tmp_path / "ckpt"), *NODE,
                                            "--node-max-nfe", budget, "--node-on-budget", policy,
                                            "--update-freq", "2", epochs=epochs), env=ENV)
    inner, valid = log_records(proc, "train_inner"), log_records(proc, "valid")
    assert len(log_records(proc, "train")) == epochs and len(valid) == epochs
    assert total(inner, fired) > 0, f"the budget never fired ({fired})"
    assert os.path.exists(tmp_path / "ckpt" / "checkpoint_last.pt")
    if budget == "18":  # every forward fires, validation included
        assert float(valid[0]["valid_node_fixed_step"]) > 0
    if policy == "fixed-step":  # every batch trained, by the fallback
        assert all(float(r["loss"]) < 20 for r in inner)
        assert float(valid[0]["valid_loss"]) < 20
    if policy == "defer":  # deferred batches come back in epoch 2
        assert total(inner, "node_replayed") + total(inner, "node_skipped") > 0


def test_error_policy_stops_with_one_line(data_bin, tmp_path):
    data, _ = data_bin
    proc = cli("fairseq-train", *train_args(data, str(tmp_path / "ckpt"), *NODE,
                                            "--node-max-nfe", "18", "--node-on-budget", "error"),
               env=ENV, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"node_transformer: error: ODE forward solve exceeded its budget: "
                        r"NFE 19 > max_nfe 18 .*", last), last
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "ckpt" / "crash.pt")


# A loader whose batches cost time inside torch (each op releases the GIL), as fairseq's
# collater's do; the process stops while the loader thread is in mid-batch.
STOP_IN_MID_EPOCH = """
import sys, torch
{plugin}
from fairseq.data import iterators

class Batches:
    def __len__(self):
        return 10 ** 6

    def __iter__(self):
        a = torch.randn(64, 64)
        while True:
            for _ in range(200):
                a = torch.tanh(a @ a)
            yield a

itr = iterators.BufferedIterator(100, Batches())
next(itr)
raise SystemExit("stopped in mid-epoch")
"""


@pytest.mark.parametrize("attempt", range(3))
def test_a_stop_in_mid_epoch_ends_with_its_own_message(attempt):
    # fairseq's loader thread used to outlive the SystemExit and abort the process at
    # finalisation ("terminate called without an active exception") after the message.
    proc = subprocess.run([sys.executable, "-c", STOP_IN_MID_EPOCH.format(plugin="import node_transformer")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == ["stopped in mid-epoch"], proc.stderr


def test_loader_threads_stop_even_with_a_full_queue():
    from fairseq.data import iterators
    from node_transformer.fairseq_fixes import stop_background_loaders

    class Endless:
        def __len__(self):
            return 10 ** 6

        def __iter__(self):
            while True:
                yield torch.zeros(3)

    itr = iterators.BufferedIterator(2, Endless())
    next(itr)  # starts the thread, which then fills the queue and blocks in put()
    thread = itr._consumer
    assert thread.is_alive()
    assert stop_background_loaders(timeout=10.0)
    assert not thread.is_alive()


def _checkpoints(save_dir):
    return {p.name: p.read_bytes() for p in save_dir.glob("*.pt")} if save_dir.exists() else {}


@pytest.mark.parametrize("resumed", [False, True])
def test_an_epoch_that_trains_nothing_stops_fairseq_train(three_batches, tmp_path, resumed):
    # A budget that passes no batch (above the least every solve needs, below what these
    # need): no update, validation loss inf. fairseq-train used to write checkpoint_best.pt
    # (score inf) and exit 0. It stops before that epoch's checkpoint; an earlier epoch's stay.
    save = tmp_path / "ckpt"

    def args(*flags, epochs):
        return train_args(three_batches, str(save), *NODE, "--batch-size", "10", *flags, epochs=epochs)

    if resumed:  # epoch 1 trains; epoch 2, resumed with the budget, cannot
        cli("fairseq-train", *args(epochs=1), env=ENV)
    before = _checkpoints(save)
    assert bool(before) == resumed
    proc = cli("fairseq-train", *args("--node-max-nfe", "8", "--node-on-budget", "skip",
                                      epochs=2 if resumed else 1), env=ENV, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"node_transformer: error: epoch {2 if resumed else 1} trained nothing: a solve "
                        r"failed in every update \(--node-on-budget skip\); stopped before saving a "
                        r"checkpoint of it: raise --node-max-nfe or use --node-on-budget fixed-step; "
                        + (rf"in {re.escape(str(save))}: checkpoint_best.pt, checkpoint_last.pt from "
                           r"the end of epoch 1 at \d+ updates" if resumed
                           else rf"no checkpoint in {re.escape(str(save))}"), last), last
    assert "Traceback" not in proc.stderr
    assert _checkpoints(save) == before  # nothing written, nothing overwritten
    assert not log_records(proc, "valid")


def test_plain_fairseq_generate_translates_every_sentence(data_bin, tmp_path):
    # fairseq's own translation task (no --task), only --user-dir: nothing may be dropped.
    data, _ = data_bin
    save = str(tmp_path / "ckpt")
    cli("fairseq-train", *train_args(data, save, "--node-decoder", "--node-method", "rk4",
                                     "--node-steps", "1", "--max-update", "2"), env=ENV)
    proc = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path",
               os.path.join(save, "checkpoint_last.pt"), "--batch-size", "8", "--beam", "2",
               "--max-len-b", "8", env=ENV)
    hyps = [line for line in proc.stdout.splitlines() if line.startswith("H-")]
    assert len(hyps) == N_TEST


# -- two workers ----------------------------------------------------------------------------

DUMP = """
import os, sys, torch
from dataclasses import replace
from fairseq_cli.train import cli_main  # first: it sets up fairseq's log format
from fairseq import trainer as T
from node_transformer.ode_block import ode_blocks
from node_transformer.task import NODETranslationTask
seen = []
init = T.Trainer.__init__
def capture(self, *a, **k):
    init(self, *a, **k)
    seen.append(self)
T.Trainer.__init__ = capture
budget_epochs = int(os.environ.get("BUDGET_EPOCHS", "0"))  # the budget holds in these only
begin_epoch = NODETranslationTask.begin_epoch
def lift_budget(self, epoch, model):
    if budget_epochs and epoch > budget_epochs:
        for block in ode_blocks(model):
            block.solver = replace(block.solver, max_nfe=None)
    begin_epoch(self, epoch, model)
NODETranslationTask.begin_epoch = lift_budget
out = sys.argv.pop(1)
try:
    cli_main()
finally:
    if seen:
        torch.save({n: p.detach().clone() for n, p in seen[0].model.named_parameters()}, out)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(tmp_path, argv_of_rank, world=2, budget_epochs=0):
    """fairseq-train with one CPU process per rank (gloo, legacy_ddp); returns the final
    parameters and the output of each rank. ``budget_epochs``: --node-max-nfe holds in the
    first epochs only."""
    script = tmp_path / "dump.py"
    script.write_text(DUMP)
    port = _free_port()
    procs = []
    for rank in range(world):
        argv = [sys.executable, str(script), str(tmp_path / f"params{rank}.pt"), *argv_of_rank(rank),
                "--cpu", "--distributed-world-size", str(world), "--distributed-rank", str(rank),
                "--distributed-no-spawn", "--distributed-backend", "gloo",
                "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--ddp-backend", "legacy_ddp"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=dict(os.environ, **ENV, BUDGET_EPOCHS=str(budget_epochs)),
                                      stdin=subprocess.DEVNULL))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    params = [torch.load(tmp_path / f"params{r}.pt") for r in range(world)]
    return params, [subprocess.CompletedProcess([], 0, *out) for out in outs]


def test_two_workers_match_one_worker_and_nfe_is_not_doubled(data_bin, tmp_path):
    # Two workers see the batches one worker with --update-freq 2 sees in each update.
    data, _ = data_bin
    flags = [*NODE, "--node-method", "bosh3"]
    (p0, p1), (two, _) = run_workers(tmp_path, lambda rank: train_args(data, str(tmp_path / f"c{rank}"), *flags))
    one = cli("fairseq-train", *train_args(data, str(tmp_path / "one"), *flags, "--update-freq", "2"), env=ENV)
    for n in p0:
        assert torch.equal(p0[n], p1[n]), n
    a, b = log_records(two, "train")[0], log_records(one, "train")[0]
    for key in ("train_nfe_enc_fwd", "train_nfe_dec_fwd", "train_nfe_enc_bwd", "train_nfe_dec_bwd"):
        assert float(a[key]) == pytest.approx(float(b[key]), rel=0.05), key
    assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-3)


@pytest.mark.parametrize("policy, budget, counter", [
    ("fixed-step", "26", "node_fixed_step"),  # fires in backwards (and some forwards)
    ("skip", "26", "node_skipped"),  # fires in some backwards
])
def test_budget_firing_on_one_worker_only_keeps_workers_identical(data_bin, tmp_path, policy,
                                                                  budget, counter):
    data, _ = data_bin

    def argv(rank):  # rank 1 alone has a budget
        limit = ["--node-max-nfe", budget] if rank == 1 else []
        return train_args(data, str(tmp_path / f"c{rank}"), *NODE, *limit, "--update-freq", "2",
                          "--node-on-budget", policy, epochs=1)

    (p0, p1), procs = run_workers(tmp_path, argv)
    for n in p0:
        assert torch.equal(p0[n], p1[n]), n
    assert total(log_records(procs[0], "train_inner"), counter) > 0
    # Equal parameters prove little (legacy_ddp all-reduces the gradients whatever each rank
    # decided): each rank must have taken every decision, rank 0 for its partner's failures.
    said = {"fixed-step": "solving the batch again with rk4", "skip": "skipped batch"}[policy]
    logs = [p.stdout + p.stderr for p in procs]
    decided = [len(re.findall(said, log)) for log in logs]
    assert decided[0] == decided[1] > 0
    assert len(re.findall(said + r".*: a solve failed on 1 other worker\(s\)", logs[0])) == decided[0]


@pytest.fixture(scope="module")
def three_batches(tmp_path_factory):
    """30 training sentences in 3 batches (--batch-size 10): of two workers, one gets two
    batches, the other one and fairseq's filler batch (trained with ignore_grad)."""
    root = tmp_path_factory.mktemp("three-batches")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_toy_data.py"), str(root / "raw"),
                    "--train", "30", "--valid", "10", "--test", "5", "--max-len", "6"],
                   check=True, capture_output=True)
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
        "--trainpref", str(root / "raw" / "train"), "--validpref", str(root / "raw" / "valid"),
        "--destdir", str(root / "bin"), "--workers", "1", env=ENV)
    return str(root / "bin")


def test_defer_with_two_workers_and_a_filler_batch(three_batches, tmp_path):
    # Every forward of epoch 1 is over budget: all its batches are deferred, and trained in
    # epoch 2 (no budget), where the worker with the filler batch must still take part in
    # the decision whether to replay (before: gloo aborted on a size mismatch).
    def argv(rank):
        return train_args(three_batches, str(tmp_path / f"c{rank}"), *NODE, "--batch-size", "10",
                          "--node-max-nfe", "18", "--node-on-budget", "defer", epochs=2)

    (p0, p1), procs = run_workers(tmp_path, argv, budget_epochs=1)
    for n in p0:
        assert torch.equal(p0[n], p1[n]), n
    epochs, valid = log_records(procs[0], "train"), log_records(procs[0], "valid")
    assert float(valid[0]["valid_node_skipped"]) > 0 and float(valid[0]["valid_loss"]) == math.inf
    assert [float(e.get("train_node_deferred", 0)) for e in epochs] == [3, 0]
    assert [float(e.get("train_node_replayed", 0)) for e in epochs] == [0, 3]
    assert math.isfinite(float(epochs[1]["train_loss"]))


# -- padding --------------------------------------------------------------------------------

def _pad_left(tokens, n, pad):
    return torch.cat([tokens.new_full((tokens.shape[0], n), pad), tokens], dim=1)


@pytest.mark.parametrize("dynamics", ["study", "prenorm"])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_padding_changes_neither_steps_nor_outputs(tmp_path, dynamics, method):
    data_dir = write_dicts(str(tmp_path))
    extra = ["--node-output-init", "xavier"] if dynamics == "prenorm" else []
    steps = ["--node-steps", "2"] if method == "rk4" else ["--node-rtol", "1e-3", "--node-atol", "1e-3"]
    task, model, _ = build(data_dir, *NODE, "--node-dynamics", dynamics, *extra,
                           "--node-method", method, *steps, "--dropout", "0.0")
    model.eval()
    pad = task.source_dictionary.pad()
    alone = batch(task, [("w1 w2 w3 w4", "w5 w6 w7")])["net_input"]
    src, prev = alone["src_tokens"], alone["prev_output_tokens"]
    padded = dict(src_tokens=_pad_left(src, 6, pad), src_lengths=alone["src_lengths"],
                  prev_output_tokens=torch.cat([prev, prev.new_full((1, 5), pad)], dim=1))
    runs = []
    for net_input in (alone, padded):
        with torch.no_grad():
            enc = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
            out, _ = model.decoder(net_input["prev_output_tokens"], encoder_out=enc)
        blocks = [b for b in model.modules() if isinstance(b, ODEBlock)]
        runs.append((enc["encoder_out"][0], out, [b.solves[-1].nfe_forward for b in blocks]))
    (enc_a, out_a, nfe_a), (enc_p, out_p, nfe_p) = runs
    assert nfe_a == nfe_p
    torch.testing.assert_close(enc_p[6:], enc_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_p[:, :prev.shape[1]], out_a, rtol=0, atol=1e-5)
    # the pad positions themselves never moved
    assert torch.count_nonzero(enc_p[:6]) == 0


# -- reduced precision ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_solve_and_train(tmp_path, dtype):
    # torchdiffeq keeps the error norm in the state's dtype: an fp16 state overflowed in its
    # first-step guess ("underflow in dt"). The solver's state is float32 whatever the model's.
    data_dir = write_dicts(str(tmp_path))
    torch.manual_seed(0)
    task, model, _ = build(data_dir, *NODE, "--dropout", "0.0", dtype=torch.float32)
    sample = batch(task, [("w1 w2 w3 w4", "w5 w6 w7"), ("w3 w2", "w8 w9 w10 w11 w4")])
    model.train()

    def step(m):
        m.zero_grad()
        out, _ = m(**sample["net_input"])
        out.float().logsumexp(-1).sum().backward()
        blocks = [b for b in m.modules() if isinstance(b, ODEBlock)]
        return out.float(), [(b.solves[-1].nfe_forward, b.solves[-1].nfe_backward) for b in blocks]

    ref_out, ref_nfe = step(model)
    half = model.to(dtype)
    out, nfe = step(half)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in half.parameters() if p.grad is not None)
    # no precision floor: about as many evaluations as in float32
    for (f, b), (rf, rb) in zip(nfe, ref_nfe):
        assert f <= 2 * rf and b <= 2 * rb, (nfe, ref_nfe)
    torch.testing.assert_close(out, ref_out, rtol=0.05, atol=0.1)


def test_batch_by_size_keeps_the_last_batch():
    import numpy as np
    from fairseq.data import data_utils

    import node_transformer  # noqa: F401  (wraps batch_by_size)
    indices = np.arange(23, dtype=np.int64)
    batches = data_utils.batch_by_size(indices, num_tokens_fn=lambda i: 5, max_sentences=8,
                                       required_batch_size_multiple=8)
    assert [len(b) for b in batches] == [8, 8, 7]
    assert np.array_equal(np.concatenate(batches), indices)


def test_padding_nfe_script_prints_both_counts(data_bin):
    data, _ = data_bin
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "padding_nfe.py"), data,
                           "--max-batches", "2"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, **ENV))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| nfe_")]
    assert [r[0].strip() for r in rows] == ["nfe_dec_fwd", "nfe_enc_fwd"]
    for _, free, held, _ in rows:
        assert int(held) > 0 and int(free) > 0
