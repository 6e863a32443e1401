"""A tiny NODE-Transformer trained by fairseq-train on the toy task, its data encoded with a
sentencepiece model the way prepare_multi30k.py lays out a data-bin (spm.model beside the
dictionaries, raw references kept), and its run directory laid out like run_experiment.py's.

Built once per test session (``trained_run``), shared by the hub, export and NFE tests.
"""

import os
import subprocess
import sys

from fairseq_helpers import ROOT, USER_DIR, cli, train_argv

ENV = {"OMP_NUM_THREADS": "1"}
N_TEST = 7  # not a multiple of 8
MODEL = [
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings", "--dropout", "0.0",
]
NODE = ["--node-encoder", "--node-decoder", "--node-method", "dopri5",
        "--node-rtol", "0.01", "--node-atol", "0.01"]

_cache = {}


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def spm_data_bin(root):
    """Toy pairs -> joint sentencepiece BPE -> fairseq-preprocess; returns (data_bin, raw)."""
    import sentencepiece as spm

    raw, pieces, data = (os.path.join(root, d) for d in ("raw", "spm", "data-bin"))
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_toy_data.py"), raw,
                    "--train", "300", "--valid", "20", "--test", str(N_TEST), "--max-len", "6"],
                   check=True, capture_output=True)
    os.makedirs(pieces)
    spm.SentencePieceTrainer.train(
        input=f"{raw}/train.src,{raw}/train.tgt", model_prefix=f"{pieces}/spm", vocab_size=60,
        model_type="bpe", character_coverage=1.0, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=f"{pieces}/spm.model")
    for split in ("train", "valid", "test"):
        for side in ("src", "tgt"):
            with open(f"{pieces}/{split}.{side}", "w", encoding="utf-8") as f:
                f.writelines(" ".join(sp.encode(line, out_type=str)) + "\n"
                             for line in read(f"{raw}/{split}.{side}"))
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--joined-dictionary", "--trainpref", f"{pieces}/train", "--validpref",
        f"{pieces}/valid", "--testpref", f"{pieces}/test", "--destdir", data, "--workers", "1",
        env=ENV)
    os.replace(f"{pieces}/spm.model", f"{data}/spm.model")
    return data, raw


def train(data, save_dir, *flags, epochs=2):
    return cli("fairseq-train", *train_argv(data, save_dir, MODEL, *flags, lr=1e-2, max_tokens=500,
                                            epochs=epochs, log=("--log-format", "simple")), env=ENV)


def trained_run(tmp_path_factory):
    """(run_dir, data_bin, raw): run_dir/checkpoints/checkpoint_best.pt, trained once."""
    if "run" not in _cache:
        root = str(tmp_path_factory.mktemp("toy-spm"))
        data, raw = spm_data_bin(root)
        run = os.path.join(root, "run")
        train(data, os.path.join(run, "checkpoints"), *NODE)
        _cache["run"] = (run, data, raw)
    return _cache["run"]
