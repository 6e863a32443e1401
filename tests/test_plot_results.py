"""scripts/plot_results.py on synthetic run dirs written the way run_experiment.py writes them."""

import json
import os
import struct
import subprocess
import sys

from experiments import fairseq_log as rx
from experiments.configs import ROOT

SCRIPTS = os.path.join(ROOT, "scripts")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def log_line(tag, stats):
    """One line as fairseq prints it with --log-format json (values are strings)."""
    return f"2026-11-28 05:47:55 | INFO | {tag} | {json.dumps(stats)}\n"


def make_run(run_dir, epochs, node):
    """train.log with train_inner/valid/train lines, then epochs.csv as run_experiment.finish().
    Epoch 3 does not improve the validation loss; the classic model learns faster."""
    os.makedirs(run_dir)
    lines, update, base = [], 0, 8.0 if node else 7.0
    for epoch in range(1, epochs + 1):
        for _ in range(4):
            update += 1
            inner = {"epoch": epoch, "update": update / 4, "loss": f"{base - 0.1 * update:.3f}",
                     "num_updates": str(update),
                     "wall": str(3 * update)}
            if node:
                inner.update(nfe_dec_fwd=str(14 + update), nfe_dec_bwd=str(30 + 2 * update),
                             nfe_enc_fwd="20", nfe_enc_bwd="26")
            lines.append(log_line("train_inner", inner))
        valid = {"epoch": epoch, "valid_loss": f"{base - 1 - 0.5 * epoch + (epoch == 3):.3f}",
                 "valid_nll_loss": "6.0", "valid_num_updates": str(update)}
        train = {"epoch": epoch, "train_loss": f"{base - 0.5 - 0.4 * epoch:.3f}",
                 "train_nll_loss": "7.0", "train_num_updates": str(update),
                 "train_wall": str(3 * update)}
        if node:
            valid["valid_nfe_dec_fwd"] = "15"
            train.update(train_nfe_dec_fwd="16", train_nfe_dec_bwd="40")
        lines += [log_line("valid", valid), log_line("train", train)]
    lines.append("2026-11-28 05:48:00 | INFO | fairseq_cli.train | done training in 9.0 seconds\n")
    with open(os.path.join(run_dir, "train.log"), "w", encoding="utf-8") as f:
        f.writelines(lines)
    rows = rx.epoch_rows(rx.parse_log(lines))
    assert len(rows) == epochs and rows[2]["best_valid_loss"] < rows[2]["valid_loss"]
    rx.write_epochs_csv(os.path.join(run_dir, "epochs.csv"), rows)


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 300 and height >= 200, (path, width, height)
    assert len(data) > 5000, (path, len(data))


def test_plots_for_node_and_classic_runs_and_a_warning_for_an_empty_one(tmp_path):
    node = str(tmp_path / "runs" / "07-separated-aug1-tol1e-2-mini")
    classic = str(tmp_path / "runs" / "02-transformer-1layer-mini")
    empty = tmp_path / "runs" / "03-node-full-tol1e-3-mini"
    failed = str(tmp_path / "runs" / "04-node-full-tol1e-2-mini")  # header-only epochs.csv
    make_run(node, epochs=4, node=True)
    make_run(classic, epochs=3, node=False)
    empty.mkdir()
    os.makedirs(failed)
    rx.write_epochs_csv(os.path.join(failed, "epochs.csv"), [])
    out = tmp_path / "plots"

    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "plot_results.py"), node, classic,
                           str(empty), failed, "--out", str(out), "--title-prefix", "mini:"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, proc.stderr
    assert str(empty) in warnings[0] and "epochs.csv" in warnings[0]
    assert failed in warnings[1]

    expected = {"best_valid_loss_epochs.png", "best_valid_loss_hours.png",
                "07-separated-aug1-tol1e-2-mini_loss.png", "07-separated-aug1-tol1e-2-mini_nfe.png",
                "02-transformer-1layer-mini_loss.png"}
    assert set(os.listdir(out)) == expected  # no NFE plot for the classic run, none for the empty
    for name in expected:
        assert_png(out / name)
    printed = proc.stdout.splitlines()
    assert printed[0].startswith("# plot_results.py ") and "--out" in printed[0]
    assert sorted(printed[1:]) == sorted(str(out / name) for name in expected)


def test_no_plottable_run_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "plot_results.py"),
                           str(tmp_path / "missing"), "--out", str(tmp_path / "plots")],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "no run to plot" in proc.stderr
    assert "warning" in proc.stderr and not (tmp_path / "plots").exists()
