"""configs/*.json, scripts/run_experiment.py (smoke runs on the toy task), run_all.py, evaluate.py."""

import csv
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from experiments import evaluation as ev
from experiments import runner as rx
from experiments.configs import ROOT

SCRIPTS = os.path.join(ROOT, "scripts")

ENV = dict(os.environ, OMP_NUM_THREADS="1")
NAMES = [
    "01-transformer-6layer", "02-transformer-1layer", "03-node-full-tol1e-3",
    "04-node-full-tol1e-2", "05-node-full-aug1-tol1e-3", "06-node-decoder-aug1-tol1e-2",
    "07-separated-aug1-tol1e-2", "08-separated-aug1-timedep-tol1e-2",
    "09-separated-aug1-weight-decay-tol1e-2",
]


def script(name, *args, timeout=240):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV, stdin=subprocess.DEVNULL)


def configs():
    out = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.json"))):
        with open(path, encoding="utf-8") as f:
            out[os.path.basename(path)[:-5]] = json.load(f)
    return out


# ---------------------------------------------------------------------------------------------
# configs


def test_all_nine_configs_parse_with_required_keys():
    cfgs = configs()
    assert sorted(cfgs) == NAMES
    assert len({c["name"] for c in cfgs.values()}) == 9
    for stem, cfg in cfgs.items():
        rx.validate_config(cfg, os.path.join(ROOT, "configs", stem + ".json"))
        assert cfg["name"] == stem
        assert isinstance(cfg["description"], str) and cfg["description"]
        assert isinstance(cfg["study"]["note"], str) and cfg["study"]["note"]
        assert cfg["budget_minutes"] == {"mini": 15, "full": None}
        args = cfg["args"]
        assert args[args.index("--task") + 1] == "node_translation"
        assert args[args.index("--arch") + 1] == "node_transformer"
        node = any(a.startswith("--node-") for a in args)
        assert node == (not stem.startswith(("01", "02")))
        if node:
            assert "--node-max-nfe" in args, stem


def test_study_numbers():
    study = {k: (c["study"]["best_valid_loss"], c["study"]["train_hours"]) for k, c in configs().items()}
    assert study["01-transformer-6layer"][0] == 3.04
    assert study["02-transformer-1layer"] == (3.194, 1.5)
    assert study["03-node-full-tol1e-3"] == (4.5, 35)
    assert study["04-node-full-tol1e-2"] == (5.98, 4)
    assert study["05-node-full-aug1-tol1e-3"] == (None, 7)
    assert study["06-node-decoder-aug1-tol1e-2"] == (None, 4)
    assert study["07-separated-aug1-tol1e-2"] == (4.38, 4)
    assert study["09-separated-aug1-weight-decay-tol1e-2"][0] is None


@pytest.mark.parametrize("scale", ["mini", "full"])
def test_config_flags_are_accepted_by_fairseq(scale, tmp_path):
    """Every config x scale parses with fairseq's own training parser, with the intended meaning."""
    from fairseq import options

    from node_transformer.config import NodeConfig

    expected = {
        "01": dict(encoder_layers=6, decoder_layers=6, node_encoder=False, node_decoder=False),
        "02": dict(encoder_layers=1, decoder_layers=1, node_encoder=False, node_decoder=False),
        "03": dict(node_encoder=True, node_decoder=True, node_rtol=1e-3, node_augment_dims=0),
        "04": dict(node_encoder=True, node_decoder=True, node_rtol=1e-2, node_atol=1e-2),
        "05": dict(node_encoder=True, node_decoder=True, node_rtol=1e-3, node_augment_dims=1),
        "06": dict(node_encoder=False, node_decoder=True, node_separated_decoder=False,
                   node_augment_dims=1, encoder_layers=1),
        "07": dict(node_encoder=False, node_separated_decoder=True, node_augment_dims=1,
                   node_time_dependent=False, weight_decay=0.0),
        "08": dict(node_separated_decoder=True, node_time_dependent=True),
        "09": dict(node_separated_decoder=True, node_time_dependent=False, weight_decay=0.01),
    }
    dims = {"mini": (128, 256, 4), "full": (512, 2048, 8)}[scale]
    for name, cfg in configs().items():
        cmd = rx.build_command(cfg, scale, str(tmp_path), str(tmp_path / "run"),
                               budget_minutes=cfg["budget_minutes"][scale])
        assert cmd[1:3] == ["-m", "fairseq_cli.train"]
        argv = cmd[3:]
        args = options.parse_args_and_arch(options.get_training_parser(), argv)
        assert args.task == "node_translation" and args.criterion == "label_smoothed_cross_entropy"
        assert args.share_all_embeddings and args.optimizer == "adam"
        assert (args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.encoder_attention_heads) == dims
        assert args.log_format == "json" and args.no_epoch_checkpoints
        assert args.stop_time_hours == pytest.approx(0.25 if scale == "mini" else 0.0, rel=1e-4)
        NodeConfig.from_namespace(args).validate()
        for key, value in expected[name[:2]].items():
            assert getattr(args, key) == pytest.approx(value), (name, key)


def test_find_config():
    assert rx.find_config("07").endswith("07-separated-aug1-tol1e-2.json")
    assert rx.find_config("7").endswith("07-separated-aug1-tol1e-2.json")
    assert rx.find_config("09-separated-aug1-weight-decay-tol1e-2").endswith("09-separated-aug1-weight-decay-tol1e-2.json")
    assert rx.find_config("08-sep").endswith("08-separated-aug1-timedep-tol1e-2.json")
    with pytest.raises(rx.RunError, match="ambiguous"):
        rx.find_config("0")
    with pytest.raises(rx.RunError, match="no config"):
        rx.find_config("42")


# ---------------------------------------------------------------------------------------------
# log parsing (the format fairseq prints with --log-format json)

LOG = """\
2026-11-28 05:47:55 | INFO | fairseq_cli.train | Start iterating over samples
2026-11-28 05:47:55 | INFO | train_inner | {"epoch": 1, "update": 0.5, "loss": "6.3", "nll_loss": "6.3", "nfe_dec_bwd": "38", "nfe_dec_fwd": "14", "num_updates": "1", "wall": "2"}
2026-11-28 05:47:55 | INFO | train_inner | {"epoch": 1, "update": 1.0, "loss": "6.2", "nll_loss": "6.2", "nfe_dec_bwd": "44", "nfe_dec_fwd": "20", "num_updates": "2", "wall": "2"}
2026-11-28 05:47:56 | INFO | valid | {"epoch": 1, "valid_loss": "6.4", "valid_nll_loss": "6.5", "valid_nfe_dec_fwd": "14", "valid_num_updates": "2"}
2026-11-28 05:47:56 | INFO | train | {"epoch": 1, "train_loss": "6.25", "train_nll_loss": "6.25", "train_nfe_dec_bwd": "41", "train_nfe_dec_fwd": "17", "train_num_updates": "2", "train_wall": "3"}
2026-11-28 05:47:57 | INFO | train_inner | {"epoch": 2, "update": 1.5, "loss": "6.1", "nfe_dec_bwd": "50", "nfe_dec_fwd": "26", "num_updates": "3", "wall": "4"}
2026-11-28 05:47:57 | INFO | fairseq_cli.train | Stopping training due to cumulative_training_time: 0.0008 > stop_time_hours: 0.0008 hour(s)
2026-11-28 05:47:57 | INFO | valid | {"epoch": 2, "valid_loss": "6.5", "valid_nll_loss": "6.6", "valid_nfe_dec_fwd": "15", "valid_num_updates": "3", "valid_best_loss": "6.4"}
2026-11-28 05:47:57 | INFO | train | {"epoch": 2, "train_loss": "6.1", "train_nll_loss": "6.1", "train_nfe_dec_bwd": "50", "train_nfe_dec_fwd": "26", "train_node_skipped": "1", "train_num_updates": "3", "train_wall": "5"}
2026-11-28 05:47:57 | INFO | fairseq_cli.train | done training in 2.0 seconds
"""


def test_parse_log_and_epoch_rows():
    parsed = rx.parse_log(LOG.splitlines())
    assert parsed["stop_reason"] == "budget" and parsed["done"]
    assert len(parsed["train_inner"]) == 3
    rows = rx.epoch_rows(parsed)
    assert [r["epoch"] for r in rows] == [1, 2]
    r1, r2 = rows
    assert (r1["train_loss"], r1["valid_loss"], r1["best_valid_loss"]) == (6.25, 6.4, 6.4)
    assert (r2["valid_loss"], r2["best_valid_loss"]) == (6.5, 6.4)
    assert (r1["wall_seconds"], r1["updates"], r2["updates"]) == (3, 2, 3)
    assert (r1["train_nfe_dec_fwd"], r1["train_nfe_dec_bwd"], r1["valid_nfe_dec_fwd"]) == (17, 41, 14)
    assert r1["train_nfe_enc_fwd"] == "" and r1["valid_nfe_dec_bwd"] == ""
    assert (r1["node_skipped"], r2["node_skipped"]) == (0, 1)
    stats = rx.nfe_stats(parsed["train_inner"])
    assert stats["nfe_dec_fwd"] == {"mean": 20.0, "max": 26, "n": 3}
    assert "nfe_enc_fwd" not in stats


def test_policy_counts_penalties_and_throughput_in_rows():
    log = LOG.replace('"train_node_skipped": "1",',
                      '"train_node_skipped": "1", "train_node_fixed_step": "4", '
                      '"train_rnode_kinetic": "0.25", "train_wps": "812.5",')
    log = log.replace('"nfe_dec_fwd": "20", "num_updates": "2"', '"nfe_dec_fwd": "20", "wps": "800", "num_updates": "2"')
    log = log.replace('"nfe_dec_fwd": "14", "num_updates": "1"', '"nfe_dec_fwd": "14", "wps": "600", "num_updates": "1"')
    parsed = rx.parse_log(log.splitlines())
    r1, r2 = rx.epoch_rows(parsed)
    assert (r1["node_fixed_step"], r2["node_fixed_step"]) == (0, 4)
    assert r2["train_rnode_kinetic"] == 0.25 and r1["train_rnode_kinetic"] == ""
    assert r2["train_wps"] == 812.5 and r2["node_deferred"] == 0
    assert rx.throughput(parsed["train_inner"]) == 700.0


def _inner(epoch, updates, wall):
    return (f'2026-11-28 06:00:00 | INFO | train_inner | {{"epoch": {epoch}, "loss": "6", '
            f'"num_updates": "{updates}", "wall": "{wall}"}}')


def _train(epoch, updates, wall):
    return (f'2026-11-28 06:00:00 | INFO | train | {{"epoch": {epoch}, "train_loss": "6", '
            f'"train_num_updates": "{updates}", "train_train_wall": "50", "train_wall": "{wall}"}}')


def _valid(epoch, updates):
    return (f'2026-11-28 06:00:00 | INFO | valid | {{"epoch": {epoch}, "valid_loss": "6.5", '
            f'"valid_num_updates": "{updates}"}}')


def test_wall_is_cumulative_across_a_killed_and_resumed_run():
    """Process 1 finishes epoch 1 (checkpoint at update 2, 56 s) and is killed in epoch 2;
    process 2 loads that checkpoint, its own wall restarts at 0 and it redoes epoch 2."""
    lines = [
        "# run_experiment: python -m fairseq_cli.train ...",
        "2026-11-28 06:00:00 | INFO | fairseq.trainer | No existing checkpoint found /r/checkpoints/checkpoint_last.pt",
        _inner(1, 1, 20), _valid(1, 2), _train(1, 2, 56), _inner(2, 3, 80),
        "# run_experiment: python -m fairseq_cli.train ...",
        "2026-11-28 06:09:00 | INFO | fairseq.trainer | Loaded checkpoint /r/checkpoints/checkpoint_last.pt (epoch 2 @ 2 updates)",
        _inner(2, 3, 25), _valid(2, 4), _train(2, 4, 56),
    ]
    parsed = rx.parse_log(lines)
    assert parsed["processes"] == 2
    rows = rx.epoch_rows(parsed)
    assert [(r["epoch"], r["wall_seconds"]) for r in rows] == [(1, 56), (2, 112)]
    assert [r["wall"] for r in parsed["train_inner"]] == [20, 80, 81]
    # a resumed process that found no checkpoint starts the clock over, as fairseq's budget does
    fresh = rx.parse_log(lines[:5] + [lines[5], lines[1], _inner(1, 1, 19), _train(1, 2, 55)])
    assert [r["wall_seconds"] for r in rx.epoch_rows(fresh)] == [55]


def test_resume_refuses_another_scale(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(rx.run_identity("07-separated-aug1-tol1e-2", "mini", False)))
    rx.check_resumable(str(run), "07-separated-aug1-tol1e-2", "mini", False)  # same: fine
    with pytest.raises(rx.RunError, match=r"scale 'mini' \(asked 'full'\)"):
        rx.check_resumable(str(run), "07-separated-aug1-tol1e-2", "full", False)
    with pytest.raises(rx.RunError, match="smoke False"):
        rx.check_resumable(str(run), "07-separated-aug1-tol1e-2", "mini", True)
    (run / "run.json").unlink()  # a run dir of an older runner: its summary.json says the same
    (run / "summary.json").write_text(json.dumps({"config": "02-transformer-1layer", "scale": "full",
                                                  "smoke": False}))
    with pytest.raises(rx.RunError, match="config '02-transformer-1layer'"):
        rx.check_resumable(str(run), "07-separated-aug1-tol1e-2", "full", False)


def test_parse_generate_orders_by_id():
    out = "S-1\tb\nS-0\ta\nH-1\t-0.5\tB\nD-1\t-0.5\tB x\nD-0\t-0.1\tA\nP-0\t-0.1\n"
    assert ev.parse_generate(out) == {0: "A", 1: "B x"}
    assert ev.count_sentences(out) == 2


# ---------------------------------------------------------------------------------------------
# end to end on the toy task


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    raw, data_bin = base / "raw", base / "bin"
    subprocess.run([sys.executable, os.path.join(SCRIPTS, "make_toy_data.py"), str(raw),
                    "--train", "200", "--valid", "20", "--test", "20"],
                   check=True, capture_output=True, env=ENV)
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "src",
                    "--target-lang", "tgt", "--trainpref", str(raw / "train"),
                    "--validpref", str(raw / "valid"), "--testpref", str(raw / "test"),
                    "--destdir", str(data_bin), "--joined-dictionary", "--workers", "1"],
                   check=True, capture_output=True, env=ENV, timeout=120)
    return base, raw, data_bin


@pytest.fixture(scope="module")
def smoke_run(toy):
    base, _, data_bin = toy
    out = base / "runs"
    proc = script("run_experiment.py", "07", "--scale", "mini", "--data-bin", str(data_bin),
                  "--out", str(out), "--smoke", "--quiet", timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "07-separated-aug1-tol1e-2-mini-smoke"


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_smoke_run_writes_csv_summary_and_checkpoint(smoke_run, toy):
    run = smoke_run
    assert (run / "checkpoints" / "checkpoint_best.pt").is_file()
    assert (run / "train.log").is_file() and os.listdir(run / "tb")
    rows = read_rows(run / "epochs.csv")
    assert 1 <= len(rows) <= 3
    assert list(rows[0]) == rx.EPOCH_COLUMNS
    for row in rows:
        assert float(row["train_nfe_dec_fwd"]) > 0
        assert float(row["train_nfe_dec_bwd"]) > 0 and float(row["valid_nfe_dec_fwd"]) > 0
        assert row["train_nfe_enc_fwd"] == ""  # classic encoder
        assert float(row["valid_loss"]) > 0 and int(row["updates"]) > 0
        assert row["node_skipped"] == "0"
    assert float(rows[-1]["best_valid_loss"]) == min(float(r["valid_loss"]) for r in rows)
    with open(run / "summary.json", encoding="utf-8") as f:
        s = json.load(f)
    assert s["config"] == "07-separated-aug1-tol1e-2" and s["scale"] == "mini" and s["smoke"]
    assert s["status"] == "ok" and s["stop_reason"] == "max_epoch"
    assert s["best_valid_loss"] == pytest.approx(float(rows[-1]["best_valid_loss"]))
    assert s["updates"] == int(rows[-1]["updates"]) and s["epochs"] == len(rows)
    assert s["nfe_train_inner"]["nfe_dec_fwd"]["max"] >= s["nfe_train_inner"]["nfe_dec_fwd"]["mean"] > 0
    assert s["language_pair"] == ["src", "tgt"]
    assert s["machine"]["cpu_count"] >= 1 and s["date"]
    assert "--stop-time-hours" in s["command"] and "fairseq_cli.train" in s["command_line"]
    assert s["wall_seconds"] < 90


def test_existing_run_dir_is_refused(smoke_run, toy):
    _, _, data_bin = toy
    proc = script("run_experiment.py", "07", "--scale", "mini", "--data-bin", str(data_bin),
                  "--out", str(smoke_run.parent), "--smoke", "--quiet")
    assert proc.returncode == 2 and "--resume" in proc.stderr and "--force" in proc.stderr


def test_run_all_skips_finished_runs(smoke_run, toy):
    _, _, data_bin = toy
    proc = script("run_all.py", "--scale", "mini", "--data-bin", str(data_bin),
                  "--out", str(smoke_run.parent), "--smoke", "--quiet", "--only", "07")
    assert proc.returncode == 0, proc.stderr
    assert "skipping" in proc.stderr and "07-separated-aug1-tol1e-2" in proc.stdout
    rows = read_rows(smoke_run.parent / "results-mini-smoke.csv")
    assert [r["config"] for r in rows] == ["07-separated-aug1-tol1e-2"]


def test_budget_stop_leaves_best_checkpoint_and_logs(toy):
    """A classic run stopped by the time budget mid-training (fairseq --stop-time-hours)."""
    base, _, data_bin = toy
    proc = script("run_experiment.py", "02", "--scale", "mini", "--data-bin", str(data_bin),
                  "--out", str(base / "budget"), "--smoke", "--quiet", "--budget-minutes", "0.02",
                  "--extra", "--max-epoch", "1000", timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = base / "budget" / "02-transformer-1layer-mini-smoke"
    with open(run / "summary.json", encoding="utf-8") as f:
        s = json.load(f)
    assert s["stop_reason"] == "budget" and s["status"] == "ok"
    assert s["epochs"] < 1000 and s["best_valid_loss"] is not None
    assert (run / "checkpoints" / "checkpoint_best.pt").is_file()
    rows = read_rows(run / "epochs.csv")
    assert rows and rows[-1]["train_loss"] and rows[-1]["valid_loss"]  # the partial epoch is logged
    assert rows[0]["train_nfe_dec_fwd"] == "" and rows[0]["node_skipped"] == ""  # no NODE
    assert re.search(r"Stopping training due to cumulative_training_time",
                     (run / "train.log").read_text())


@pytest.mark.slow  # 60-80 s on the shared machine; the log logic is in the default suite above
def test_resumed_run_continues_the_clock_and_keeps_its_scale(toy):
    """Epoch 1 in one process, epoch 2 in a --resume'd one: epochs.csv's wall_seconds of
    epoch 2 is epoch 1's plus the second process's own (fairseq's wall restarts at 0)."""
    base, _, data_bin = toy
    args = ["02", "--scale", "mini", "--data-bin", str(data_bin), "--out", str(base / "resume"),
            "--smoke", "--quiet", "--budget-minutes", "0"]
    first = script("run_experiment.py", *args, "--extra", "--max-epoch", "1", timeout=150)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"next: \S*python\S* \S*evaluate\.py \S*02-transformer-1layer-mini-smoke", first.stderr)
    second = script("run_experiment.py", *args, "--resume", "--extra", "--max-epoch", "2", timeout=150)
    assert second.returncode == 0, second.stderr[-3000:]
    run = base / "resume" / "02-transformer-1layer-mini-smoke"
    log = (run / "train.log").read_text()
    assert "Loaded checkpoint" in log
    own = [json.loads(m)["train_wall"] for m in re.findall(r"\| train \| (\{.*\})", log)]
    assert len(own) == 2
    rows = read_rows(run / "epochs.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[0]["wall_seconds"]) == float(own[0])
    assert float(rows[1]["wall_seconds"]) == pytest.approx(float(own[0]) + float(own[1]))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["fairseq_wall_seconds"] == pytest.approx(
        float(rows[1]["wall_seconds"]))
    other = script("run_experiment.py", "02", "--scale", "full", "--run-name", run.name,
                   *args[3:], "--resume")
    assert other.returncode == 2 and "scale 'mini' (asked 'full')" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_evaluate_smoke_run(smoke_run, toy):
    _, raw, data_bin = toy
    proc = script("evaluate.py", str(smoke_run), "--data-bin", str(data_bin),
                  "--ref", str(raw / "test.tgt"), "--remove-bpe", "none",
                  "--beam", "2", "--max-len-b", "12", timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("BLEU = ")
    with open(smoke_run / "bleu_test.json", encoding="utf-8") as f:
        result = json.load(f)
    assert result["sentences"] == 20 and 0 <= result["bleu"] <= 100
    assert "tok:13a" in result["signature"]
    with open(smoke_run / "hyp_test.txt", encoding="utf-8") as f:
        assert len(f.read().split("\n")) == 21


def test_evaluate_finds_reference_kept_by_prepare(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "test2016.de").write_text("x\n")
    (tmp_path / "subsets.json").write_text(json.dumps(
        {"target_lang": "de", "raw_dir": "raw", "subsets": {"test": "test2016", "test1": "test2017"}}))
    assert ev.find_reference(str(tmp_path), "test", None) == str(tmp_path / "raw" / "test2016.de")
    assert ev.find_reference(str(tmp_path), "test1", None) is None  # file absent
    assert ev.find_reference(str(tmp_path / "nowhere"), "test", None) is None


def test_watchdog_reaches_a_child_of_a_background_shell(tmp_path):
    """`nohup run_experiment.py ... &` starts the runner with SIGINT ignored; the child must
    still stop at the watchdog's first SIGINT, not after the 30 s grace (then SIGTERM)."""
    log = tmp_path / "train.log"
    code = ("import sys, json; sys.path.insert(0, %r); from experiments import runner as rx; "
            "cmd = [sys.executable, '-c', \"import time; print('started', flush=True); time.sleep(120)\"]; "
            "print(json.dumps(rx.run_fairseq(cmd, %r, hard_limit=1.0, quiet=True, append=False)))"
            % (ROOT, str(log)))
    runner = subprocess.run(["sh", "-c", 'trap "" INT; exec "$0" -c "$1"', sys.executable, code],
                            capture_output=True, text=True, timeout=90, env=ENV)
    assert runner.returncode == 0, runner.stderr[-2000:]
    rc, fired, seconds = json.loads(runner.stdout.strip().splitlines()[-1])
    assert fired and rc != 0
    assert seconds < 20, f"child ignored SIGINT: stopped only after {seconds:.0f}s"
    assert "KeyboardInterrupt" in log.read_text()


def test_watchdog_interrupts_a_run_past_its_hard_limit(tmp_path):
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"]
    rc, fired, seconds = rx.run_fairseq(cmd, str(log), hard_limit=1.0, quiet=True, append=False)
    assert fired and rc != 0 and seconds < 30
    assert "started" in log.read_text()


def test_stages_estimate_the_time_left(capsys):
    from experiments import progress

    st = progress.Stages("run_all", ["a", "b", "c"], [600, None, 300])
    assert st.left(0) is None  # b has no expected time and nothing is measured yet
    st.done = [400.0]
    assert st.left(1) == 700.0 and st.left(2) == 300.0  # b counts as the mean so far
    st.start(2, "starting")
    assert re.match(r"run_all: \[3/3\] c: starting \(\d+s elapsed, about 5m 00s left\)$",
                    capsys.readouterr().err.strip())
    assert progress.duration(3725) == "1h 02m" and progress.duration(61) == "1m 01s"
