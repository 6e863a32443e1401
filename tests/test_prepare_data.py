"""scripts/prepare_multi30k.py on a small generated corpus (and the real one's checksums only)."""

import gzip
import hashlib
import os
import random
import shutil
import subprocess
import sys

import pytest

from experiments.configs import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "prepare_multi30k.py")
REAL = os.path.join(os.path.dirname(ROOT), "shared", "data", "multi30k")  # ../shared beside the checkout
SPLITS = {"train": 200, "valid": 20, "test2016": 20, "test2017": 20, "test2018": 20}
EN = "a man woman dog child plays runs on the street in park with ball red blue two people are".split()
DE = "ein mann frau hund kind spielt läuft auf der straße im park mit ball rot blau grün über".split()


def load_module():
    from experiments import multi30k

    return multi30k


def write_corpus(path, seed=0):
    """A multi30k-like directory: the ten expected files, line-parallel, with non-ASCII text."""
    rng = random.Random(seed)
    os.makedirs(path, exist_ok=True)
    for split, n in SPLITS.items():
        for lang, words in (("en", EN), ("de", DE)):
            lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + " ."
                     for _ in range(n)]
            with open(os.path.join(path, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return path


def prepare(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def small(src, out, *more):
    return prepare("--from", str(src), "--out", str(out), "--expect-counts", "none",
                   "--vocab-size", "60", *more)


def snapshot(path):
    """{relative path: (inode, mtime_ns, sha256)} of every file under path."""
    snap = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            with open(full, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            snap[os.path.relpath(full, path)] = (st.st_ino, st.st_mtime_ns, digest)
    return snap


def leftovers(parent):
    return [n for n in os.listdir(parent) if ".tmp-" in n or ".old-" in n]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(corpus dir, data-bin) built once for the module."""
    base = tmp_path_factory.mktemp("prep")
    src = write_corpus(str(base / "corpus"))
    out = base / "bin" / "multi30k_en_de"
    proc = small(src, out)
    assert proc.returncode == 0, proc.stderr
    return src, str(out)


def test_builds_a_fairseq_data_bin(built):
    src, out = built
    names = set(os.listdir(out))
    assert {"dict.en.txt", "dict.de.txt", "spm.model", "stamp.json", "subsets.json"} <= names
    for subset in ("train", "valid", "test", "test1", "test2"):
        for lang in ("en", "de"):
            for ext in ("bin", "idx"):
                path = os.path.join(out, f"{subset}.en-de.{lang}.{ext}")
                assert os.path.getsize(path) > 0, path
    with open(os.path.join(out, "dict.en.txt"), encoding="utf-8") as a, \
            open(os.path.join(out, "dict.de.txt"), encoding="utf-8") as b:
        assert a.read() == b.read()  # joined dictionary
    # raw references kept verbatim for BLEU
    for split in ("valid", "test2016", "test2017", "test2018"):
        with open(os.path.join(src, f"{split}.de"), "rb") as a, \
                open(os.path.join(out, "raw", f"{split}.de"), "rb") as b:
            assert a.read() == b.read()
    # the binarized sets hold every sentence
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(out, "dict.de.txt"))
    for subset, split in (("train", "train"), ("valid", "valid"), ("test", "test2016"), ("test2", "test2018")):
        ds = data_utils.load_indexed_dataset(os.path.join(out, f"{subset}.en-de.de"), d)
        assert len(ds) == SPLITS[split]
    assert not leftovers(os.path.dirname(out))


def test_second_run_does_nothing(built):
    src, out = built
    before = snapshot(out)
    proc = small(src, out)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert snapshot(out) == before


def test_changed_options_rebuild_in_place(built, tmp_path):
    src, good = built
    out = tmp_path / "multi30k_en_de"
    shutil.copytree(good, out)
    proc = small(src, out, "--vocab-size", "50")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" not in proc.stdout
    import json

    with open(out / "stamp.json") as f:
        assert json.load(f)["key"]["options"]["vocab_size"] == 50
    assert not leftovers(tmp_path)


def _missing(src):
    os.remove(os.path.join(src, "valid.de"))
    return "valid.de", "missing"


def _mismatch(src):
    path = os.path.join(src, "train.de")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[:-1])
    return "train.de", "lines"


def _bad_utf8(src):
    with open(os.path.join(src, "test2017.en"), "ab") as f:
        f.write(b"caf\xe9 latin-1\n")
    with open(os.path.join(src, "test2017.de"), "a", encoding="utf-8") as f:
        f.write("ein café\n")
    return "test2017.en", "UTF-8"


def _official_counts(src):
    return "train.en", "expected 29000"


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over-previous-output"])
@pytest.mark.parametrize("breakage", [_missing, _mismatch, _bad_utf8, _official_counts],
                         ids=["missing", "line-mismatch", "bad-utf8", "official-counts"])
def test_bad_inputs_stop_cleanly(built, tmp_path, breakage, existing):
    src = write_corpus(str(tmp_path / "corpus"))
    fname, problem = breakage(src)
    parent = tmp_path / "bin"
    out = parent / "multi30k_en_de"
    if existing:
        shutil.copytree(built[1], out)
        before = snapshot(out)
    args = ["--from", src, "--out", str(out), "--vocab-size", "60"]
    if breakage is not _official_counts:
        args += ["--expect-counts", "none"]
    proc = prepare(*args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("prepare_multi30k: error: ")
    assert fname in lines[0] and problem in lines[0]
    if existing:
        assert snapshot(out) == before
        assert not leftovers(parent)
    else:
        assert not os.path.exists(parent)  # nothing created at all


def test_failure_during_build_leaves_no_temp_and_keeps_old(built, tmp_path):
    src, good = built
    out = tmp_path / "multi30k_en_de"
    shutil.copytree(good, out)
    before = snapshot(out)
    proc = small(src, out, "--vocab-size", "5000")  # too large for this corpus: spm fails
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("prepare_multi30k: error")]
    assert len(lines) == 1 and "vocab" in lines[0].lower()
    assert snapshot(out) == before
    assert not leftovers(tmp_path)


def test_foreign_output_dir_is_not_overwritten(built, tmp_path):
    out = tmp_path / "somebody_elses"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    proc = small(built[0], out)
    assert proc.returncode == 2 and "stamp.json" in proc.stderr
    assert os.listdir(out) == ["keep.txt"]


@pytest.mark.skipif(not os.path.isdir(REAL), reason=f"{REAL} not present")
def test_real_multi30k_passes_the_checks():
    mod = load_module()
    sums = mod.read_sha256sums(os.path.join(REAL, "SHA256SUMS"))
    assert sums == mod.OFFICIAL_SHA256  # embedded constants are the published checksums
    info = mod.check_inputs(REAL, expect_counts=True, expected_sha256=sums)
    assert {k: v["lines"] for k, v in info.items() if k.endswith(".en")} == {
        "train.en": 29000, "valid.en": 1014, "test2016.en": 1000, "test2017.en": 1000,
        "test2018.en": 1071}


@pytest.mark.skipif(not os.path.isdir(REAL), reason=f"{REAL} not present")
def test_download_path_checks_against_embedded_checksums(tmp_path):
    """The download code path, served from file:// URLs shaped like the release (.gz files)."""
    mod = load_module()
    release = tmp_path / "release"
    release.mkdir()
    for base, remote, _ in mod.SPLITS.values():
        for lang in ("en", "de"):
            with open(os.path.join(REAL, f"{base}.{lang}"), "rb") as f:
                data = f.read()
            with gzip.open(release / f"{remote}.{lang}.gz", "wb", compresslevel=1) as g:
                g.write(data)
    url = "file://" + str(release)
    proc = prepare("--url", url, "--out", str(tmp_path / "out"), "--check-only")
    assert proc.returncode == 0, proc.stderr
    assert "official release" in proc.stderr
    assert not (tmp_path / "out").exists()

    # one altered character, same line count: the checksum must catch it
    with gzip.open(release / "val.de.gz", "rb") as g:
        data = g.read()
    with gzip.open(release / "val.de.gz", "wb", compresslevel=1) as g:
        g.write(data.replace(b"Ein", "Eín".encode(), 1))
    proc = prepare("--url", url, "--out", str(tmp_path / "out"), "--check-only")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "valid.de" in errors[0] and "sha256" in errors[0]


def test_head_builds_from_the_first_lines_after_checking_all(built, tmp_path):
    src, _ = built
    out = tmp_path / "head"
    proc = small(src, out, "--head", "100")
    assert proc.returncode == 0, proc.stderr
    import json

    stamp = json.loads((out / "stamp.json").read_text())
    assert stamp["key"]["options"]["head"] == 100
    assert stamp["lines"]["train.en"] == 100 and stamp["lines"]["valid.de"] == SPLITS["valid"]
    with open(os.path.join(src, "train.de"), encoding="utf-8") as f:
        first = f.read().splitlines()[:100]
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(out / "dict.de.txt"))
    train = data_utils.load_indexed_dataset(str(out / "train.en-de.de"), d)
    assert len(train) == 100
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert sp.decode(d.string(train[99]).split()) == first[99]  # the 100th line, not another
    assert not (out / "head").exists()
    again = small(src, out, "--head", "100")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    # the whole files are still checked: a broken line beyond the head is caught
    broken = write_corpus(str(tmp_path / "broken"))
    with open(os.path.join(broken, "test2018.en"), "ab") as f:
        f.write(b"caf\xe9\n")
    with open(os.path.join(broken, "test2018.de"), "a", encoding="utf-8") as f:
        f.write("x\n")
    bad = small(broken, tmp_path / "bad", "--head", "5")
    assert bad.returncode == 2 and "test2018.en" in bad.stderr and "UTF-8" in bad.stderr
