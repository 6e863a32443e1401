"""scripts/time_variants.py (the timing half of scripts/gpu-check.sh) runs and reports."""

import json
import os
import subprocess
import sys

from fairseq_helpers import ROOT


def test_time_variants_smoke(tmp_path):
    out = tmp_path / "timing.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "time_variants.py"), "--device", "cpu",
         "--seconds", "0.2", "--tiny", "--vocab", "50", "--batch", "4", "--json", str(out),
         "--variants", "transformer-1layer", "node-separated-aug1"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["transformer-1layer", "node-separated-aug1"]
    assert all(r["tokens_per_second"] > 0 and r["steps"] >= 1 for r in rows)
    assert "nfe_dec_fwd" not in rows[0] and rows[1]["nfe_dec_fwd"] > 0 and rows[1]["nfe_dec_bwd"] > 0
