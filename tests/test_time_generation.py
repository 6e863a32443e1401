"""scripts/time_generation.py: NFE counts over several batches (the task resets its count per batch)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, sentences, batch_size):
    out = tmp_path / f"rows-{sentences}-{batch_size}.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "time_generation.py"), "--tiny",
                    "--repeats", "1", "--configs", "classic-1layer", "project-best", "--skip-recompute",
                    "--sentences", str(sentences), "--batch-size", str(batch_size), "--tgt-len", "6",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, cwd=ROOT)
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    return next(r for r in rows if r.get("config") == "project-best")


def test_decoder_nfe_sums_every_batch(tmp_path):
    one = run(tmp_path, 4, 4)
    three = run(tmp_path, 12, 4)
    assert one["nfe_dec_total"] > 0
    # same forced length and solver: three batches make three times one batch's evaluations
    assert three["nfe_dec_total"] == 3 * one["nfe_dec_total"]
    assert three["nfe_dec_per_sentence"] == one["nfe_dec_per_sentence"]
    assert three["nfe_dec_per_step"] == one["nfe_dec_per_step"] == 2.0
