"""Load a trained NODE-Transformer from Python and translate raw text.

    import node_transformer
    model = node_transformer.from_pretrained("runs/demo/model")
    model.translate(["wa0 wb0 wc0"], beam=4)

fairseq's generic hub path (``hub_utils.from_pretrained`` + ``GeneratorHubInterface``) does the
work; this module finds what it needs in the directory (checkpoint, dictionaries, the
sentencepiece model) so a user need not know the registry trick or fairseq's file names, and
adds a ``score`` that works for translation (fairseq's own scores language models only).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Union

import torch
from fairseq import hub_utils, utils
from fairseq.data import LanguagePairDataset
from fairseq.sequence_scorer import SequenceScorer

from . import model as _model  # noqa: F401  (registers the architecture)
from . import task as _task  # noqa: F401  (registers node_translation)

# Tried in this order when no checkpoint_file is given: an exported model, then a run's.
CHECKPOINT_NAMES = ("model.pt", "checkpoint_best.pt", "checkpoint_last.pt")
# prepare_multi30k.py writes spm.model; fairseq's own archives call it sentencepiece.bpe.model.
SPM_NAMES = ("spm.model", "sentencepiece.bpe.model")


class NODEHubInterface(hub_utils.GeneratorHubInterface):
    """fairseq's GeneratorHubInterface (translate, sample, generate, encode, decode) with a
    ``score`` of given translations."""

    def score(self, sources: Union[str, List[str]], targets: Union[str, List[str]] = None,
              **kwargs) -> Union[Dict, List[Dict]]:
        """Log-probabilities of ``targets`` as translations of ``sources`` (teacher-forced).

        Each result has ``score`` (mean log-probability per target token, natural log, end of
        sentence included), ``positional_scores`` and ``tokens``. One string in, one dict out.
        """
        if targets is None:
            raise TypeError("score(sources, targets): a translation model scores pairs; "
                            "pass the target sentences too")
        if isinstance(sources, str) != isinstance(targets, str):
            raise TypeError("score: sources and targets must both be strings or both lists")
        if isinstance(sources, str):
            return self.score([sources], [targets], **kwargs)[0]
        if len(sources) != len(targets):
            raise ValueError(f"score: {len(sources)} sources but {len(targets)} targets")
        src = [self.encode(s) for s in sources]
        tgt = [self.tgt_dict.encode_line(self.apply_bpe(self.tokenize(t)),
                                         add_if_not_exist=False).long() for t in targets]
        dataset = LanguagePairDataset(
            src, [len(s) for s in src], self.src_dict, tgt, [len(t) for t in tgt], self.tgt_dict,
            left_pad_source=self.cfg.task.left_pad_source,
            left_pad_target=self.cfg.task.left_pad_target)
        batches = self.task.get_batch_iterator(
            dataset=dataset, max_tokens=self.cfg.dataset.max_tokens,
            max_sentences=self.cfg.dataset.batch_size, max_positions=self.max_positions,
            ignore_invalid_inputs=False, disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)
        scorer = SequenceScorer(self.tgt_dict, **kwargs)
        results = {}
        for batch in batches:
            batch = utils.apply_to_sample(lambda t: t.to(self.device), batch)
            hypos = self.task.inference_step(scorer, self.models, batch)
            for i, h in zip(batch["id"].tolist(), hypos):
                results[i] = {"score": float(h[0]["score"]),
                              "positional_scores": h[0]["positional_scores"].cpu(),
                              "tokens": h[0]["tokens"].cpu()}
        return [results[i] for i in range(len(sources))]


def _first(directory: str, names) -> Optional[str]:
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def from_pretrained(model_dir: str, checkpoint_file: Optional[str] = None,
                    data_name_or_path: Optional[str] = None, device: Optional[str] = None,
                    **overrides) -> NODEHubInterface:
    """A NODE-Transformer ready to translate raw text, in eval mode.

    ``model_dir``: a directory written by scripts/export_model.py (model.pt, dictionaries,
    spm.model if the data used one), or a fairseq --save-dir (checkpoint_best.pt; then
    ``data_name_or_path`` names the data-bin holding the dictionaries). The sentencepiece
    model is taken from the model directory, else from the data directory; without one,
    sentences are split on spaces as the dictionary's tokens. ``device``: "cpu", "cuda", ...
    (default: CUDA when available). ``overrides`` go to fairseq's config, e.g.
    ``node_rtol=1e-3``, ``batch_size=32``, ``bpe=None``.
    """
    model_dir = os.path.abspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"from_pretrained: {model_dir} is not a directory")
    if checkpoint_file is None:
        found = _first(model_dir, CHECKPOINT_NAMES)
        if found is None:
            raise FileNotFoundError(f"from_pretrained: no {' / '.join(CHECKPOINT_NAMES)} in {model_dir}")
        checkpoint_file = os.path.basename(found)
    elif not os.path.isfile(os.path.join(model_dir, checkpoint_file)):
        raise FileNotFoundError(f"from_pretrained: {checkpoint_file} not found in {model_dir}")
    data_dir = os.path.abspath(data_name_or_path) if data_name_or_path else model_dir
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"from_pretrained: data_name_or_path {data_dir} is not a directory")
    if not any(n.startswith("dict.") and n.endswith(".txt") for n in os.listdir(data_dir)):
        hint = "" if data_name_or_path else ": pass data_name_or_path=DATA_BIN"
        raise FileNotFoundError(f"from_pretrained: no dict.*.txt in {data_dir}{hint}")
    if "bpe" not in overrides:
        spm = _first(model_dir, SPM_NAMES) or _first(data_dir, SPM_NAMES)
        if spm:
            overrides.update(bpe="sentencepiece", sentencepiece_model=spm)
    loaded = hub_utils.from_pretrained(model_dir, checkpoint_file=checkpoint_file,
                                       data_name_or_path=data_dir, **overrides)
    hub = NODEHubInterface(loaded["args"], loaded["task"], loaded["models"])
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return hub.to(device).eval()
