"""``node_translation``: fairseq's translation task, NODE-aware.

It logs the NFE of encoder and decoder (forward and adjoint backward) and the RNODE penalties
with every update through fairseq's metrics, so they appear in train_inner / train / valid
lines and in tensorboard without a fork of fairseq's Trainer. A batch whose solve exceeds
--node-max-nfe is handled by --node-on-budget (error, skip, fixed-step, defer), and each
outcome is counted (node_skipped, node_fixed_step, node_deferred, node_replayed: sums per
logging interval and per epoch).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
from fairseq import utils
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from odeint_ext import MaxNFEExceeded

from .ode_block import ODEBlock
from .options import DEFAULTS

logger = logging.getLogger(__name__)

SIDES = (("encoder", "enc"), ("decoder", "dec"))
COUNTERS = ("node_skipped", "node_fixed_step", "node_deferred", "node_replayed")
PENALTIES = (("kinetic", "node_kinetic_energy"), ("jacobian", "node_jacobian_norm"))


def _blocks(module):
    return [m for m in module.modules() if isinstance(m, ODEBlock)] if module is not None else []


def _setting(model, name):
    """A --node-* flag of the model (fairseq's legacy Transformer keeps its args)."""
    return getattr(getattr(model, "args", None), name, DEFAULTS[name])


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


@contextmanager
def fixed_step_solves(model, steps: int):
    """Every ODE block solves with rk4 on ``steps`` steps, unbounded, inside the block."""
    blocks = _blocks(model)
    for b in blocks:
        b.fallback = b.solver.fixed_step(steps)
    try:
        yield
    finally:
        for b in blocks:
            b.fallback = None


class PenalisedCriterion:
    """The criterion's loss plus the RNODE penalties of the last forward's solves.

    fairseq sums the loss over the batch and divides the gradient by sample_size, so the
    penalties are multiplied by sample_size: coefficient C weighs C per target token (per
    sentence with --sentence-avg), whatever the batch size.
    """

    def __init__(self, criterion):
        self.criterion = criterion

    def __call__(self, model, sample):
        loss, sample_size, log = self.criterion(model, sample)
        total, logged = 0.0, {}
        for name, flag in PENALTIES:
            coef = _setting(model, flag)
            terms = [b.penalties[name] for b in _blocks(model) if name in b.penalties]
            if coef > 0 and terms:
                term = sum(terms)
                total = total + coef * term
                logged[f"rnode_{name}"] = float(term.detach())
        if logged:
            loss = loss + total * sample_size
            log.update(logged)
        return loss, sample_size, log


def _empty_output(counter: str) -> dict:
    return {"loss": 0.0, "nll_loss": 0.0, "ntokens": 0, "nsentences": 0, "sample_size": 0,
            counter: 1}


def _merge(a: tuple, b: tuple) -> tuple:
    """Two batches trained in one step: losses, sizes and logged numbers add up."""
    log = dict(a[2])
    for k, v in b[2].items():
        log[k] = log.get(k, 0) + v if isinstance(v, (int, float)) or torch.is_tensor(v) else v
    return a[0] + b[0], a[1] + b[1], log


@register_task("node_translation", dataclass=TranslationConfig)
class NODETranslationTask(TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._live_batches = 0  # batches of the current update that reached the optimizer
        self._deferred: List[dict] = []  # over budget this epoch (on the CPU)
        self._replay: List[dict] = []  # deferred in an earlier epoch, to train on now

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # fairseq main drops the last batch when its size is not a multiple of
        # --required-batch-size-multiple: generate would print 96 of 100 translations and
        # training would never see the longest sentences. Every sentence must be used.
        kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if self._deferred:
            logger.info("epoch %d: %d deferred batches will be trained on again", epoch, len(self._deferred))
        self._replay.extend(self._deferred)
        self._deferred = []

    def _attempt(self, sample, model, criterion, optimizer, update_num, ignore_grad):
        reset_nfe(model)
        loss, sample_size, log = super().train_step(
            sample, model, PenalisedCriterion(criterion), optimizer, update_num, ignore_grad)
        log.update(collect_nfe(model, backward=True))
        return loss, sample_size, log

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        policy = _setting(model, "node_on_budget")
        # Gradients of earlier batches of this update (--update-freq > 1) survive a failure.
        saved = _save_grads(model) if self._live_batches else None
        try:
            out = self._attempt(sample, model, criterion, optimizer, update_num, ignore_grad)
        except MaxNFEExceeded as e:
            if policy == "error":
                raise
            failed_nfe = collect_nfe(model, backward=True)
            _restore_grads(model, optimizer, saved)
            if policy == "fixed-step":
                steps = _setting(model, "node_fallback_steps")
                logger.warning("solving the batch again with rk4, %d steps: %s", steps, e)
                with fixed_step_solves(model, steps):
                    out = self._attempt(sample, model, criterion, optimizer, update_num, ignore_grad)
                out = _merge(out, (0, 0, {**failed_nfe, "node_fixed_step": 1}))
            else:
                deferred = policy == "defer" and not ignore_grad
                if deferred:
                    self._deferred.append(utils.move_to_cpu(sample))
                counter = "node_deferred" if deferred else "node_skipped"
                logger.warning("%s batch of %d sentences: %s", counter[5:], sample.get("nsentences", 0), e)
                # A zero backward keeps distributed workers in step.
                optimizer.backward(sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0)
                return torch.zeros(()), 0, {**_empty_output(counter), **failed_nfe}
        self._live_batches += 1
        if self._replay and not ignore_grad:
            out = self._train_replayed(out, model, criterion, optimizer, update_num)
        return out

    def _train_replayed(self, out, model, criterion, optimizer, update_num):
        """One deferred batch joins this step; over budget again, it is dropped for good."""
        device = next(model.parameters()).device
        sample = utils.apply_to_sample(lambda t: t.to(device), self._replay.pop(0))
        saved = _save_grads(model)
        try:
            again = self._attempt(sample, model, criterion, optimizer, update_num, False)
        except MaxNFEExceeded as e:
            _restore_grads(model, optimizer, saved)
            logger.warning("dropping a deferred batch, over budget again: %s", e)
            return _merge(out, (0, 0, {"node_skipped": 1}))
        return _merge(out, (again[0], again[1], {**again[2], "node_replayed": 1}))

    def optimizer_step(self, optimizer, model, update_num):
        skip = self._live_batches == 0
        self._live_batches = 0
        if skip:
            optimizer.zero_grad()  # only skipped batches in this update: no step
            return
        super().optimizer_step(optimizer, model, update_num)

    def valid_step(self, sample, model, criterion):
        reset_nfe(model)
        try:
            loss, sample_size, log = super().valid_step(sample, model, criterion)
        except MaxNFEExceeded as e:
            policy = _setting(model, "node_on_budget")
            if policy == "error":
                raise
            if policy != "fixed-step":
                return torch.zeros(()), 0, _empty_output("node_skipped")
            with fixed_step_solves(model, _setting(model, "node_fallback_steps")):
                loss, sample_size, log = super().valid_step(sample, model, criterion)
            log["node_fixed_step"] = 1
        log.update(collect_nfe(model, backward=False))
        return loss, sample_size, log

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        keys = sorted({k for log in logging_outputs for k in log
                       if k.startswith("nfe_") or k.startswith("rnode_")})
        for key in keys:
            values = [log[key] for log in logging_outputs if key in log]
            # Mean per training step (per solve of each side), over steps and workers.
            metrics.log_scalar(key, sum(values) / len(values), len(values), round=3 if key.startswith("rnode") else 1)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # Running peak; the runner takes its largest logged value.
            metrics.log_scalar("cuda_peak_mb", torch.cuda.max_memory_allocated() / 2 ** 20, round=0)
        for key in COUNTERS:
            count = sum(log.get(key, 0) for log in logging_outputs)
            if count:
                metrics.log_scalar_sum(key, count)


def _save_grads(model) -> Dict[torch.nn.Parameter, torch.Tensor]:
    return {p: p.grad.clone() for p in model.parameters() if p.grad is not None}


def _restore_grads(model, optimizer, saved: Optional[dict]) -> None:
    """Back to the gradients before the failed batch: a half-done backward is unusable."""
    optimizer.zero_grad()
    for p, g in (saved or {}).items():
        p.grad = g
