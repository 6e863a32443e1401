"""NODE-Transformers built from command-line flags, in-process, the way fairseq-train builds
them, and the model sizes that the scripts and tests share.

fairseq is imported only by :func:`build_model`: importing this module (the runner does, for
its smoke sizes) stays cheap.
"""

from __future__ import annotations

import os
from typing import Iterable, List

from .configs import USER_DIR


def dims(embed: int, ffn: int, heads: int) -> List[str]:
    """The size flags of encoder and decoder alike."""
    return ["--encoder-embed-dim", str(embed), "--decoder-embed-dim", str(embed),
            "--encoder-ffn-embed-dim", str(ffn), "--decoder-ffn-embed-dim", str(ffn),
            "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads)]


SIZES = {
    "test": dims(8, 16, 2),  # in-process unit tests: the smallest that still has two heads
    "tiny": dims(16, 32, 2),  # smoke runs: fairseq-train tests, --smoke, --tiny
    "mini": dims(128, 256, 4),  # the configs' mini scale; the benchmark's memory probe
    "base": dims(512, 2048, 8),  # the study's full scale (Transformer base)
}


def write_dicts(path: str, words: Iterable[str], count: int = 1) -> str:
    """A joined src/tgt dictionary: all fairseq's translation task needs to set up."""
    words = list(words)
    os.makedirs(path, exist_ok=True)
    for lang in ("src", "tgt"):
        with open(os.path.join(path, f"dict.{lang}.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{w} {count}\n" for w in words)
    return path


def build_model(data_dir: str, *flags: str):
    """(task, model, args) of ``node_translation`` / ``node_transformer`` from fairseq-train
    flags (sizes, --node-*, ...), with the src/tgt dictionaries of ``data_dir``."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [data_dir, "--user-dir", USER_DIR, "--task", "node_translation",
            "--source-lang", "src", "--target-lang", "tgt", "--arch", "node_transformer", *flags]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model), args
