"""Prepare Multi30k Task 1 (English-German) for fairseq: check, joint BPE, binarize.

    prepare_multi30k.py [--from DIR] [--out data-bin/multi30k_en_de] [--vocab-size 8000]

Inputs: the official release (github multi30k/dataset, data/task1/raw, pinned to one commit),
downloaded and decompressed, or a local directory (--from) of plain files named
train.{en,de} valid.{en,de} test2016.{en,de} test2017.{en,de} test2018.{en,de}.

Checks before anything is written: every file present, valid UTF-8, the same number of
lines on both sides of each split, the official line counts (unless --expect-counts none),
and SHA-256 checksums (against --from DIR/SHA256SUMS when present; for a download, against
the official checksums embedded below). A failed check prints one line
"prepare_multi30k: error: FILE: problem" and exits with status 2.

Then: a joint sentencepiece BPE model (train.en + train.de, --vocab-size), every split
encoded with it, and `python -m fairseq_cli.preprocess --joined-dictionary` (this
interpreter) into --out. Fairseq subsets: train, valid, test (test2016), test1 (test2017),
test2 (test2018); subsets.json maps them to the raw files kept in OUT/raw/ (the detokenized
references for BLEU), next to the sentencepiece model OUT/spm.model.

--head N builds from the first N lines of every split (after checking the whole files as
above): a small data-bin of the real corpus, for smoke runs (use a small --vocab-size).

The output is built in a temporary directory beside --out and renamed into place at the
end, so a failure never leaves a half-written --out and never touches a previous good one.
OUT/stamp.json records the inputs' checksums and the options: a second run with the same
inputs and options does nothing and says so.

Multi30k carries no license file and is for non-commercial research use; this script
fetches or reads it, it never ships it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

from .progress import bar

PROG = "prepare_multi30k"
STAMP_VERSION = 1
LANGS = ("en", "de")

# split -> (local base name, name of the .gz file in the official release, line count)
SPLITS = {
    "train": ("train", "train", 29000),
    "valid": ("valid", "val", 1014),
    "test2016": ("test2016", "test_2016_flickr", 1000),
    "test2017": ("test2017", "test_2017_flickr", 1000),
    "test2018": ("test2018", "test_2018_flickr", 1071),
}
# fairseq subset name for each split (fairseq-preprocess --testpref a,b,c -> test, test1, test2)
FAIRSEQ_SUBSET = {"train": "train", "valid": "valid", "test2016": "test",
                  "test2017": "test1", "test2018": "test2"}

# The official release these checksums describe (multi30k/dataset, data/task1/raw).
RELEASE_COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
RELEASE_URL = ("https://raw.githubusercontent.com/multi30k/dataset/"
               f"{RELEASE_COMMIT}/data/task1/raw")
# SHA-256 of the decompressed files of that release (facts about the published files).
OFFICIAL_SHA256 = {
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "valid.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "valid.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "test2016.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test2016.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test2017.en": "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98",
    "test2017.de": "c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081",
    "test2018.en": "4e585c2dd525911a6ea7730e9d0b516239af3f1b1ffae6a2130223cfb639f25e",
    "test2018.de": "39fcc8b3331d76fb42d648d019c6898b0d5e58baac87bc2a0bb93f44ec8db207",
}


class InputError(Exception):
    """A problem with one input file: reported as one line, exit status 2."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")


def file_names() -> List[str]:
    return [f"{base}.{lang}" for base, _, _ in SPLITS.values() for lang in LANGS]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sha256sums(path: str) -> Dict[str, str]:
    """Parse a `sha256sum` listing ('HEX  NAME' or 'HEX *NAME')."""
    sums = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or len(parts[0]) != 64:
                raise InputError(path, f"line {n}: not a 'SHA256  NAME' line")
            sums[os.path.basename(parts[1].lstrip("*"))] = parts[0].lower()
    return sums


def count_utf8_lines(path: str) -> int:
    """Number of lines (a last line without newline counts); InputError if not UTF-8."""
    n = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):  # binary lines end at b"\n" only
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not valid UTF-8: line {n}, byte {e.start + 1} "
                                       f"(0x{line[e.start]:02x})") from None
    return n


def check_inputs(src_dir: str, expect_counts: bool = True,
                 expected_sha256: Optional[Dict[str, str]] = None) -> Dict[str, dict]:
    """Check the ten files of src_dir; returns {name: {"path", "lines", "sha256"}}.

    expected_sha256: {file name: hex}; every input listed there must match.
    Raises InputError on the first problem.
    """
    names = file_names()
    for name in names:  # all present before any reading
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path):
            raise InputError(path, "missing")
    info = {}
    for name in names:
        path = os.path.join(src_dir, name)
        info[name] = {"path": path, "lines": count_utf8_lines(path), "sha256": sha256_file(path)}
    for base, _, count in SPLITS.values():
        en, de = info[f"{base}.en"], info[f"{base}.de"]
        if en["lines"] != de["lines"]:
            raise InputError(de["path"], f"{de['lines']} lines but {base}.en has {en['lines']}: "
                                         "the two sides must be line-parallel")
        if expect_counts and en["lines"] != count:
            raise InputError(en["path"], f"{en['lines']} lines, expected {count} "
                                         "(use --expect-counts none for another corpus)")
        if en["lines"] == 0:
            raise InputError(en["path"], "empty")
    if expected_sha256:
        for name in names:
            want = expected_sha256.get(name)
            if want is not None and info[name]["sha256"] != want.lower():
                raise InputError(info[name]["path"],
                                 f"sha256 {info[name]['sha256']} does not match the expected {want}")
    return info


# --------------------------------------------------------------------------------------------
# download


def download_release(dest: str, base_url: str) -> None:
    """Fetch and decompress the ten .gz files of the release into dest (plain names)."""
    print(f"{PROG}: downloading {len(SPLITS) * len(LANGS)} files from {base_url}", file=sys.stderr)
    with bar(total=len(SPLITS) * len(LANGS), desc="download", unit="file") as progress:
        for split, (base, remote, _) in SPLITS.items():
            for lang in LANGS:
                fetch_one(f"{base_url.rstrip('/')}/{remote}.{lang}.gz",
                          os.path.join(dest, f"{base}.{lang}"))
                progress.update(1)


def fetch_one(url: str, out: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(url, f"cannot download ({reason}); offline? "
                              "use --from DIR with the plain files") from None
    try:
        data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise InputError(url, f"not a valid gzip file ({e})") from None
    with open(out, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------------------------
# building


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def train_spm(prefix: str, inputs: List[str], vocab_size: int) -> None:
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            input=",".join(inputs), model_prefix=prefix, vocab_size=vocab_size,
            model_type="bpe", character_coverage=1.0, num_threads=1,
            input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise InputError(",".join(os.path.basename(i) for i in inputs),
                         f"sentencepiece training failed with --vocab-size {vocab_size}: {msg}") from None


def encode_file(sp, src: str, dst: str, progress=None) -> None:
    with open(dst, "w", encoding="utf-8") as f:
        for line in read_lines(src):
            f.write(" ".join(sp.encode(line, out_type=str)) + "\n")
            if progress is not None:
                progress.update(1)


def build(tmp: str, info: Dict[str, dict], args) -> None:
    import sentencepiece as spm

    src, tgt = args.source_lang, args.target_lang
    t0 = time.time()
    print(f"{PROG}: learning a joint sentencepiece BPE (vocab {args.vocab_size}) "
          "on train.en + train.de", file=sys.stderr)
    train_spm(os.path.join(tmp, "spm"), [info["train.en"]["path"], info["train.de"]["path"]],
              args.vocab_size)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "spm.model"))

    bpe = os.path.join(tmp, "bpe")
    raw = os.path.join(tmp, "raw")
    os.makedirs(bpe)
    os.makedirs(raw)
    with bar(total=sum(v["lines"] for v in info.values()), desc="encode", unit="line") as progress:
        for base, _, _ in SPLITS.values():
            for lang in LANGS:
                name = f"{base}.{lang}"
                encode_file(sp, info[name]["path"], os.path.join(bpe, name), progress)
                if base != "train":  # raw references / sources for scoring
                    shutil.copyfile(info[name]["path"], os.path.join(raw, name))
    print(f"{PROG}: encoded all splits ({time.time() - t0:.1f}s); running fairseq-preprocess",
          file=sys.stderr)

    # Relative paths, run inside tmp: preprocess.log then names bpe/train.en, not the temp dir.
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess",
           "--source-lang", src, "--target-lang", tgt,
           "--trainpref", "bpe/train", "--validpref", "bpe/valid",
           "--testpref", "bpe/test2016,bpe/test2017,bpe/test2018",
           "--destdir", ".", "--joined-dictionary", "--workers", str(args.workers)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL, cwd=tmp)
    if proc.returncode != 0:
        tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-1:] or ["?"]
        raise RuntimeError(f"fairseq-preprocess failed (exit {proc.returncode}): {tail[0]}")
    with open(os.path.join(tmp, "preprocess.out"), "w", encoding="utf-8") as f:
        f.write(proc.stdout)

    subsets = {FAIRSEQ_SUBSET[split]: base for split, (base, _, _) in SPLITS.items()}
    with open(os.path.join(tmp, "subsets.json"), "w", encoding="utf-8") as f:
        json.dump({"source_lang": src, "target_lang": tgt,
                   "subsets": subsets,
                   "raw_dir": "raw",
                   "note": "fairseq subset -> raw file base name in raw_dir ({base}.{lang}); "
                           "train is not kept raw"}, f, indent=1)


def stamp_key(checksums: Dict[str, str], args) -> dict:
    """What a rebuild depends on: the inputs' contents and the options."""
    import sentencepiece

    try:
        from importlib.metadata import version
        fairseq_version = version("fairseq-fixed")
    except Exception:  # pragma: no cover
        fairseq_version = None
    key = {
        "stamp_version": STAMP_VERSION,
        "inputs_sha256": dict(sorted(checksums.items())),
        "options": {"vocab_size": args.vocab_size, "model_type": "bpe",
                    "character_coverage": 1.0, "joined_dictionary": True,
                    "source_lang": args.source_lang, "target_lang": args.target_lang},
        "tools": {"sentencepiece": sentencepiece.__version__, "fairseq": fairseq_version},
    }
    if args.head:  # only when set: a data-bin stamped before --head existed stays up to date
        key["options"]["head"] = args.head
    return key


def read_stamp(out: str) -> Optional[dict]:
    try:
        with open(os.path.join(out, "stamp.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def install(tmp: str, out: str) -> None:
    """Rename tmp to out; a previous out is moved aside first and removed only afterwards."""
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
        os.rmdir(old)
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def take_head(info: Dict[str, dict], n: int, dest: str) -> Dict[str, dict]:
    """Copies of the first n lines of every input in dest; info with their paths and counts."""
    out = {}
    for name, v in info.items():
        lines = read_lines(v["path"])[:n]
        path = os.path.join(dest, name)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        out[name] = dict(v, path=path, lines=len(lines))
    return out


def fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--from", dest="src", metavar="DIR",
                   help="local directory of the plain files (default: download the official release)")
    p.add_argument("--out", default=os.path.join("data-bin", "multi30k_en_de"), metavar="DIR",
                   help="fairseq data-bin directory to create (default data-bin/multi30k_en_de)")
    p.add_argument("--vocab-size", type=int, default=8000, help="joint BPE vocabulary (default 8000)")
    p.add_argument("--expect-counts", choices=("multi30k", "none"), default="multi30k",
                   help="check the official line counts (default) or only en/de parity (none)")
    p.add_argument("--source-lang", choices=LANGS, default="en")
    p.add_argument("--target-lang", choices=LANGS, default="de")
    p.add_argument("--workers", type=int, default=1, help="fairseq-preprocess --workers (default 1)")
    p.add_argument("--url", default=RELEASE_URL,
                   help="base URL of the release's data/task1/raw (default: pinned commit)")
    p.add_argument("--check-only", action="store_true",
                   help="fetch/read and check the inputs, then stop (writes nothing)")
    p.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    p.add_argument("--head", type=int, metavar="N",
                   help="use only the first N lines of every split (a small data-bin for smoke runs)")
    return p


def fetch(args, out: str) -> tuple:
    """Step 1: where the inputs are and what their checksums must be: (dir, expected sha256
    or None, a download dir to remove afterwards or None); (None, None, None) when a
    download is not needed because out is already built from the official release."""
    if args.src:
        if not os.path.isdir(args.src):
            raise InputError(args.src, "not a directory")
        sums_file = os.path.join(args.src, "SHA256SUMS")
        return args.src, read_sha256sums(sums_file) if os.path.isfile(sums_file) else None, None
    stamp = read_stamp(out)
    if (not args.force and not args.check_only and stamp is not None
            and stamp.get("key") == stamp_key(OFFICIAL_SHA256, args)):
        return None, None, None
    download_dir = tempfile.mkdtemp(prefix=f"{PROG}-download-")
    try:
        download_release(download_dir, args.url)
    except BaseException:
        shutil.rmtree(download_dir, ignore_errors=True)
        raise
    return download_dir, OFFICIAL_SHA256, download_dir


def check(args, src_dir: str, expected: Optional[Dict[str, str]]) -> Dict[str, dict]:
    """Step 2: every input present, UTF-8, line-parallel, counted and checksummed."""
    info = check_inputs(src_dir, expect_counts=args.expect_counts == "multi30k",
                        expected_sha256=expected)
    how = ("checked against SHA256SUMS" if args.src and expected
           else "checked against the official release" if expected
           else "not checked: no SHA256SUMS in --from DIR")
    print(f"{PROG}: inputs OK: " + ", ".join(
        f"{b} {info[b + '.en']['lines']}" for b, _, _ in SPLITS.values())
        + f" lines; checksums {how}", file=sys.stderr)
    return info


def up_to_date(out: str, key: dict, force: bool) -> bool:
    if not os.path.exists(out):
        return False
    stamp = read_stamp(out)
    if stamp is None:
        raise InputError(out, "exists but has no stamp.json (not made by this script); "
                              "remove it or choose another --out")
    return stamp.get("key") == key and not force


def build_into_temp(args, info: Dict[str, dict], key: dict, out: str) -> str:
    """Step 3: the whole data-bin in a temporary directory beside out; returns its path."""
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        if args.head:
            head_dir = os.path.join(tmp, "head")
            os.makedirs(head_dir)
            info = take_head(info, args.head, head_dir)
        build(tmp, info, args)
        if args.head:
            shutil.rmtree(head_dir)
        stamp = {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "source": os.path.abspath(args.src) if args.src else args.url,
                 "lines": {name: v["lines"] for name, v in info.items()}}
        with open(os.path.join(tmp, "stamp.json"), "w", encoding="utf-8") as f:
            json.dump(stamp, f, indent=1)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def main(argv=None) -> int:
    p = arg_parser()
    args = p.parse_args(argv)
    if args.head is not None and args.head < 1:
        p.error("--head must be >= 1")
    if args.source_lang == args.target_lang:
        p.error("--source-lang and --target-lang must differ")
    if args.vocab_size < 2:
        p.error("--vocab-size must be >= 2")

    out = os.path.abspath(args.out)
    download_dir = None
    try:
        src_dir, expected, download_dir = fetch(args, out)
        if src_dir is None:
            print(f"{PROG}: {out} is up to date (official release, same options): nothing to do")
            return 0
        info = check(args, src_dir, expected)
        if args.check_only:
            return 0
        key = stamp_key({name: v["sha256"] for name, v in info.items()}, args)
        if up_to_date(out, key, args.force):
            print(f"{PROG}: {out} is up to date (same inputs and options): nothing to do")
            return 0
        tmp = build_into_temp(args, info, key, out)
        try:
            install(tmp, out)  # step 4
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"{PROG}: wrote {out}")
        return 0
    except (InputError, RuntimeError) as e:
        fail(str(e))
    finally:
        if download_dir is not None:
            shutil.rmtree(download_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
