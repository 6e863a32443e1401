"""scripts/export_model.py: a model directory that can be moved and loaded, by the hub and by
fairseq-interactive on raw text with --bpe sentencepiece."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import node_transformer
from fairseq_helpers import BIN, ROOT, USER_DIR
from toy_model import ENV, read, trained_run

EXPORT = os.path.join(ROOT, "scripts", "export_model.py")
GEN = {"max_len_b": 8}


def export(*args, check=True):
    proc = subprocess.run([sys.executable, EXPORT, *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **ENV), stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The trained toy run, as run_experiment.py and evaluate.py leave one."""
    run_dir, data, raw = trained_run(tmp_path_factory)
    rich = str(tmp_path_factory.mktemp("run-with-records"))
    shutil.copytree(os.path.join(run_dir, "checkpoints"), os.path.join(rich, "checkpoints"))
    with open(os.path.join(rich, "summary.json"), "w") as f:
        json.dump({"data_bin": data, "command_line": "python -m fairseq_cli.train DATA --arch node_transformer"}, f)
    with open(os.path.join(rich, "bleu_test.json"), "w") as f:
        json.dump({"bleu": 12.34, "signature": "nrefs:1|tok:13a", "date": "2026-11-28"}, f)
    return rich, data, raw


@pytest.fixture(scope="module")
def moved(run, tmp_path_factory):
    """Exported, then moved elsewhere: nothing in it may point back."""
    run_dir, _, raw = run
    out = os.path.join(str(tmp_path_factory.mktemp("export")), "model")
    proc = export(run_dir, out, "--example", read(os.path.join(raw, "test.src"))[0])
    assert "wrote" in proc.stderr
    elsewhere = os.path.join(str(tmp_path_factory.mktemp("moved")), "my-model")
    shutil.move(out, elsewhere)
    assert not os.path.exists(out)
    return elsewhere


def test_writes_what_loading_needs_and_nothing_else(run, moved):
    run_dir, data, _ = run
    assert sorted(os.listdir(moved)) == ["README.md", "dict.src.txt", "dict.tgt.txt",
                                         "model.pt", "spm.model"]
    for name in ("dict.src.txt", "spm.model"):
        with open(os.path.join(moved, name), "rb") as a, open(os.path.join(data, name), "rb") as b:
            assert a.read() == b.read()
    state = torch.load(os.path.join(moved, "model.pt"), map_location="cpu")
    original = torch.load(os.path.join(run_dir, "checkpoints", "checkpoint_best.pt"), map_location="cpu")
    assert original.get("last_optimizer_state") and not state.get("last_optimizer_state")
    assert all("optimizer" not in h for h in state["optimizer_history"])
    assert state["model"].keys() == original["model"].keys()
    assert all(torch.equal(state["model"][k], original["model"][k]) for k in state["model"])
    assert os.path.getsize(os.path.join(moved, "model.pt")) < 0.6 * os.path.getsize(
        os.path.join(run_dir, "checkpoints", "checkpoint_best.pt"))
    assert state["cfg"]["task"]["source_lang"] == "src" and state["cfg"]["task"]["data"] == "."
    blob = open(os.path.join(moved, "model.pt"), "rb").read()
    assert os.path.dirname(run_dir).encode() not in blob, "a path of the training machine is left"
    assert ROOT.encode() not in blob


def test_readme_stub_records_command_bleu_licence_and_runs(run, moved):
    text = open(os.path.join(moved, "README.md"), encoding="utf-8").read()
    assert "python -m fairseq_cli.train DATA --arch node_transformer" in text
    assert "12.34" in text and "nrefs:1|tok:13a" in text
    assert "## Data licence" in text and "not recorded" in text  # the toy data-bin has none
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace('"DIR"', repr(moved)).replace("beam=5)", "beam=2, max_len_b=8)")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert isinstance(scope["model"], node_transformer.NODEHubInterface)


def test_moved_dir_translates_like_the_run(run, moved):
    run_dir, data, raw = run
    sources = read(os.path.join(raw, "test.src"))
    here = node_transformer.from_pretrained(moved, batch_size=1)
    there = node_transformer.from_pretrained(os.path.join(run_dir, "checkpoints"),
                                             data_name_or_path=data, batch_size=1)
    assert here.translate(sources, beam=3, **GEN) == there.translate(sources, beam=3, **GEN)


def test_fairseq_interactive_on_raw_text_with_sentencepiece(moved):
    raw_sources = ["wa0 wb0 wc0", "wd0 we0", "wf0 wa0 wb0 wc0 wd0"]
    proc = subprocess.run(
        [os.path.join(BIN, "fairseq-interactive"), moved, "--user-dir", USER_DIR,
         "--task", "node_translation", "--source-lang", "src", "--target-lang", "tgt",
         "--path", os.path.join(moved, "model.pt"), "--beam", "3", "--max-len-b", "8",
         "--batch-size", "1", "--bpe", "sentencepiece",
         "--sentencepiece-model", os.path.join(moved, "spm.model")],
        input="\n".join(raw_sources) + "\n", capture_output=True, text=True, timeout=300,
        env=dict(os.environ, **ENV))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # S- lines show the sentencepiece pieces: the raw text was encoded by --bpe
    sources_seen = re.findall(r"^S-\d+\t(.*)$", proc.stdout, re.M)
    assert len(sources_seen) == len(raw_sources) and all("▁" in s for s in sources_seen)
    detok = {int(m.group(1)): m.group(2)
             for m in re.finditer(r"^D-(\d+)\t[^\t]*\t(.*)$", proc.stdout, re.M)}
    hub = node_transformer.from_pretrained(moved, batch_size=1)
    assert [detok[i] for i in range(len(raw_sources))] == hub.translate(raw_sources, beam=3, **GEN)


def test_licence_and_data_bin_options(run, tmp_path):
    run_dir, data, _ = run
    bare = tmp_path / "bare-run"
    shutil.copytree(os.path.join(run_dir, "checkpoints"), bare / "checkpoints")
    # the checkpoint's own data path still names the data-bin: found without --data-bin
    out = tmp_path / "a"
    export(str(bare), str(out), "--data-licence", "CC0: do as you like")
    text = (out / "README.md").read_text()
    assert "CC0: do as you like" in text
    assert "not recorded (no summary.json or train_command.txt" in text
    assert "not measured" in text
    # a LICENSE file in the data-bin is quoted
    data_copy = tmp_path / "data-copy"
    shutil.copytree(data, data_copy)
    (data_copy / "LICENSE").write_text("Some licence text.\n")
    export(str(bare), str(tmp_path / "b"), "--data-bin", str(data_copy))
    assert "Some licence text." in (tmp_path / "b" / "README.md").read_text()


def test_bad_input_stops_with_one_line(run, tmp_path):
    run_dir, _, _ = run
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = export(run_dir, str(out), check=False)
    assert proc.returncode == 2 and (out / "keep.txt").read_text() == "mine"
    assert proc.stderr.strip() == f"export_model: error: {out}: exists and is not empty (--force replaces it)"
    proc = export(str(tmp_path), str(tmp_path / "x"), check=False)
    assert proc.returncode == 2 and "no checkpoint_best.pt or checkpoint_last.pt" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = export(run_dir, str(tmp_path / "y"), "--data-bin", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no dict.*.txt: not a fairseq data-bin" in proc.stderr
    assert not (tmp_path / "y").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".export-")]
    export(run_dir, str(out), "--force")
    assert sorted(os.listdir(out))[0] == "README.md" and not (out / "keep.txt").exists()


def test_readme_front_door_example_runs_on_an_exported_model(moved, capsys):
    """README.md's "Use a trained model from Python" block, pointed at a model exported here
    (the README's own path is the demo's, made by scripts/demo.sh)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Use a trained model from Python"):]
    code = re.search(r"```py\n(.*?)```", section, re.S).group(1)
    assert code.count("\n") == 3 and '"runs/demo/model"' in code
    code = code.replace('"runs/demo/model"', repr(moved)).replace("beam=4)", "beam=4, max_len_b=8)")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("['") and printed.endswith("']")
