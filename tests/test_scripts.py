"""scripts/*.py are mains of a few lines over the packages (issue #24): the programs live in
node_transformer/ and experiments/, the scripts edit no sys.path, and ``python -m MODULE``
runs the same program as ``python scripts/NAME.py``."""

import filecmp
import glob
import importlib.util
import os
import re
import subprocess
import sys

from experiments.configs import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "scripts", "*.py")))


def module_of(path):
    found = re.search(r"^from ([\w.]+) import main$", open(path, encoding="utf-8").read(), re.M)
    assert found, f"{path}: no 'from MODULE import main'"
    return found.group(1)


def test_each_script_is_a_few_lines_calling_a_package_main():
    assert len(SCRIPTS) >= 15
    for path in SCRIPTS:
        text = open(path, encoding="utf-8").read()
        assert "sys.path" not in text, path
        assert len(text.splitlines()) <= 10, path
        spec = importlib.util.find_spec(module_of(path))
        assert spec is not None and spec.origin.startswith(ROOT + os.sep), path


def test_python_m_runs_what_the_script_runs(tmp_path):
    """The toy task (no torch, fast): the script and ``python -m`` write the same files."""
    args = ["--train", "7", "--valid", "3", "--test", "2", "--seed", "5"]
    script = os.path.join(ROOT, "scripts", "make_toy_data.py")
    subprocess.run([sys.executable, script, str(tmp_path / "a"), *args], check=True,
                   capture_output=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", module_of(script), str(tmp_path / "b"), *args],
                   check=True, capture_output=True, cwd=ROOT)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b")) and len(names) == 6
    assert filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)[0] == names
