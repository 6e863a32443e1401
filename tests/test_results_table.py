"""scripts/results_table.py turns run summaries into the results page's table."""

import json
import os
import subprocess
import sys

from fairseq_helpers import ROOT


def write_run(path, nfe, bleu=None):
    os.makedirs(path)
    summary = {"updates": 120, "epochs": 3, "wall_seconds": 900.0, "best_valid_loss": 6.5,
               "best_valid_nll_loss": 6.1, "nfe_train_inner": nfe, "node_skipped": 0,
               "study": {"best_valid_loss": 4.38, "train_hours": 4}}
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(summary, f)
    if bleu is not None:
        with open(os.path.join(path, "bleu_test.json"), "w") as f:
            json.dump({"bleu": bleu}, f)  # as scripts/evaluate.py writes it


def test_results_table(tmp_path):
    write_run(tmp_path / "07-mini", {"nfe_dec_fwd": {"mean": 26.4, "max": 38, "n": 12}}, bleu=12.34)
    write_run(tmp_path / "02-mini", {})
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "results_table.py"),
                           str(tmp_path / "07-mini"), str(tmp_path / "02-mini"),
                           str(tmp_path / "empty")], capture_output=True, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and "empty" in proc.stderr
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "07-mini" and cells[3] == "15.0" and cells[4] == "6.500"
    assert cells[6] == "12.3" and cells[9] == "26 / 38" and cells[7] == "-"
    assert [c.strip() for c in lines[3].strip("|").split("|")][6] == "-"
