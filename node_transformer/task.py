"""``node_translation``: fairseq's translation task, NODE-aware.

It logs the NFE of encoder and decoder (forward and adjoint backward) with every update
through fairseq's metrics, so they appear in train_inner / train / valid lines and in
tensorboard without a fork of fairseq's Trainer; and it skips, logs and counts a batch whose
solve exceeds --node-max-nfe instead of crashing or hanging.
"""

from __future__ import annotations

import logging
from typing import Dict

import torch
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from odeint_ext import MaxNFEExceeded

from .ode_block import ODEBlock

logger = logging.getLogger(__name__)

SIDES = (("encoder", "enc"), ("decoder", "dec"))


def _blocks(module):
    return [m for m in module.modules() if isinstance(m, ODEBlock)] if module is not None else []


def reset_nfe(model) -> None:
    for block in _blocks(model):
        block.solves.clear()


def collect_nfe(model, backward: bool) -> Dict[str, int]:
    """NFE of each NODE side since the last reset, summed over its blocks and solves."""
    out = {}
    for side, tag in SIDES:
        blocks = _blocks(getattr(model, side, None))
        if not blocks:
            continue
        solves = [s for b in blocks for s in b.solves]
        out[f"nfe_{tag}_fwd"] = sum(s.nfe_forward for s in solves)
        if backward:
            out[f"nfe_{tag}_bwd"] = sum(s.nfe_backward for s in solves)
    return out


def _skipped_output(e: MaxNFEExceeded, sample) -> dict:
    logger.warning("skipping batch of %d sentences: %s", sample.get("nsentences", 0) if sample else 0, e)
    return {"loss": 0.0, "nll_loss": 0.0, "ntokens": 0, "nsentences": 0, "sample_size": 0,
            "node_skipped": 1}


@register_task("node_translation", dataclass=TranslationConfig)
class NODETranslationTask(TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._live_batches = 0  # batches of the current update that reached the optimizer
        self._spoiled = False  # a backward hit the budget after some gradients were written

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # fairseq main drops the last batch when its size is not a multiple of
        # --required-batch-size-multiple: generate would print 96 of 100 translations and
        # training would never see the longest sentences. Every sentence must be used.
        kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        reset_nfe(model)
        try:
            loss, sample_size, log = super().train_step(
                sample, model, criterion, optimizer, update_num, ignore_grad)
        except MaxNFEExceeded as e:
            if e.phase == "forward":
                # No gradient written yet: a zero backward keeps distributed workers in step.
                optimizer.backward(sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0)
            else:
                # The backward stopped half-way; its partial gradients cannot be used.
                optimizer.zero_grad()
                self._spoiled = True
            return torch.zeros(()), 0, {**_skipped_output(e, sample), **collect_nfe(model, True)}
        self._live_batches += 1
        log.update(collect_nfe(model, backward=True))
        return loss, sample_size, log

    def optimizer_step(self, optimizer, model, update_num):
        skip = self._spoiled or self._live_batches == 0
        self._live_batches, self._spoiled = 0, False
        if skip:
            optimizer.zero_grad()  # only skipped batches, or unusable gradients: no step
            return
        super().optimizer_step(optimizer, model, update_num)

    def valid_step(self, sample, model, criterion):
        reset_nfe(model)
        try:
            loss, sample_size, log = super().valid_step(sample, model, criterion)
        except MaxNFEExceeded as e:
            return torch.zeros(()), 0, _skipped_output(e, sample)
        log.update(collect_nfe(model, backward=False))
        return loss, sample_size, log

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        keys = sorted({k for log in logging_outputs for k in log if k.startswith("nfe_")})
        for key in keys:
            values = [log[key] for log in logging_outputs if key in log]
            # Mean NFE per batch (per solve of each side), over batches and workers.
            metrics.log_scalar(key, sum(values) / len(values), len(values), round=1)
        skipped = sum(log.get("node_skipped", 0) for log in logging_outputs)
        if skipped:
            metrics.log_scalar_sum("node_skipped", skipped)
