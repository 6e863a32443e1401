"""``node_translation``: fairseq's translation task, NODE-aware.

It logs the NFE of encoder and decoder (forward and adjoint backward) and the RNODE penalties
with every update through fairseq's metrics, so they appear in train_inner / train / valid
lines and in tensorboard without a fork of fairseq's Trainer. A batch whose solve fails
(over --node-max-nfe, or a solver error such as torchdiffeq's "underflow in dt") is handled
by --node-on-budget (error, skip, fixed-step, defer), and each outcome is counted
(node_skipped, node_fixed_step, node_deferred, node_replayed: sums per logging interval and
per epoch).

With several workers every such decision is collective: after each forward and each backward
the workers agree (one tiny all-reduce) on whether any of them failed, so all of them skip,
retry or defer the same batch together and none ever runs a backward the others do not; after
a batch has trained, a third says whether any of them has a deferred batch to train with it.
Every worker takes part in each, one on fairseq's filler batch (``ignore_grad``) too.

An update in which every batch failed takes no optimizer step and is not counted: fairseq's
``num_updates``, learning-rate schedule and --max-update count steps taken (fairseq_fixes 7),
as fairseq does for an fp16 overflow. An epoch whose every update failed stops fairseq-train
before its checkpoint is written (under defer: unless the next epoch can train its batches,
i.e. it is neither the second such epoch in a row nor the last of --max-epoch). Deferred
batches that the run's end leaves untrained are named in a warning.
"""

import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from fairseq import utils
from fairseq.logging import meters, metrics
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from odeint_ext import ODESolveError

from .config import NodeConfig
from .metric_names import (BACKWARD, BATCHES, COUNTERS, CUDA_PEAK, DEFERRED, ERROR_PREFIX,
                           FIXED_STEP, FORWARD, NFE_PREFIX, PENALTY_NAMES, PENALTY_PREFIX,
                           REPLAYED, SIDES, SKIPPED, VALID_COUNTERS, error_batches_key, error_key,
                           nfe_key, penalty_key)
from .ode_block import (clear_penalties, depth_blocks, fixed_step_fallback, ode_blocks,
                        penalties_per_position, record_backward_overruns, total_penalties)

logger = logging.getLogger(__name__)

# What a failed solve looks like: the budget, the non-finite guard and torchdiffeq's own
# asserts, which odeint_ext turns into ODESolveError (in the adjoint backward too).
SOLVER_ERRORS = (ODESolveError,)


def node_settings(model) -> NodeConfig:
    """The model's --node-* settings; the defaults for a model of another architecture.

    A model with ODE blocks but no settings in reach is an error, not the defaults: a
    wrapper that does not forward attributes (fairseq's ModuleProxyWrapper does) would
    otherwise train with other budget and penalty settings than the ones asked for."""
    node = getattr(model, "node_config", None)
    if node is not None:
        return node
    if depth_blocks(model):
        raise TypeError(f"{type(model).__name__} holds ODE blocks but no node_config: wrap the "
                        f"model so that its attributes stay reachable (fairseq's ModuleProxyWrapper)")
    return NodeConfig()


def reset_nfe(model) -> None:
    for block in depth_blocks(model):
        block.reset_record()


def collect_nfe(model, backward: bool) -> Dict[str, int]:
    """NFE of each NODE side since the last reset, summed over its blocks and solves."""
    out = {}
    for side, tag in SIDES:
        records = [b.nfe_record() for b in depth_blocks(getattr(model, side, None))]
        if not records:
            continue
        out[nfe_key(tag, FORWARD)] = sum(r.nfe_forward for r in records)
        if backward:
            out[nfe_key(tag, BACKWARD)] = sum(r.nfe_backward for r in records)
    return out


class PenalisedCriterion:
    """The criterion's loss plus the RNODE penalties of the last forward's solves.

    fairseq's criterion sums the loss over target tokens (and the trainer divides the gradient
    by sample_size); the penalties are summed over the real positions of each block's state
    likewise (ode_block.total_penalties), so that a batch's loss is the sum of its sentences'
    losses alone: coefficient C weighs C per target token in the decoder and per source token
    in the encoder, with or without --sentence-avg. --node-error-penalty W adds W x each
    block's error estimate x its real positions likewise (regularisers.py: not additive).
    Logged: each RNODE penalty per position, summed over the blocks; the error estimate of
    each side, summed over its blocks (ode_block.penalties_per_position), and whether the side
    had one. Only this forward's solves count: a block that LayerDrop skipped adds nothing.
    """

    def __init__(self, criterion):
        self.criterion = criterion

    def __call__(self, model, sample):
        clear_penalties(model)
        loss, sample_size, log = self.criterion(model, sample)
        total, logged = 0.0, {}
        terms = total_penalties(model)
        coefficients = node_settings(model).regularisation().coefficients
        for name, coef in coefficients.items():
            if coef > 0 and name in terms:
                total = total + coef * terms[name]
        shown = penalties_per_position(model)
        for name in PENALTY_NAMES:
            if coefficients[name] > 0 and name in shown:
                logged[penalty_key(name)] = shown[name]
        if coefficients["error"] > 0:  # per side, as the NFE
            for side, tag in SIDES:
                error = penalties_per_position(getattr(model, side, None)).get("error")
                if error is not None:
                    logged[error_key(tag)] = error
                    logged[error_batches_key(tag)] = 1
        if torch.is_tensor(total):
            loss = loss + total
            log.update(logged)
        return loss, sample_size, log


def _merge(a: tuple, b: tuple) -> tuple:
    """Two batches trained in one step: losses, sizes and logged numbers add up."""
    log = dict(a[2])
    for k, v in b[2].items():
        log[k] = log.get(k, 0) + v if isinstance(v, (int, float)) or torch.is_tensor(v) else v
    return a[0] + b[0], a[1] + b[1], log


def _stop(error: BaseException) -> SystemExit:
    """--node-on-budget error: one line naming the failure, not a traceback. A SystemExit
    passes fairseq's crash handler, which would otherwise write crash.pt."""
    return SystemExit(f"node_transformer: error: {error} "
                      "(--node-on-budget error stops training; skip, fixed-step or defer go on)")


class _OtherWorkerFailed(ODESolveError):
    """This worker's batch was fine, another worker's solve failed on its batch."""


def _world(model) -> Tuple[Optional[object], int]:
    if not (dist.is_available() and dist.is_initialized()):
        return None, 1
    from fairseq.distributed import utils as dist_utils
    group = dist_utils.get_data_parallel_group()
    return group, dist_utils.get_data_parallel_world_size()


class PeakMeter(meters.Meter):
    """The largest value logged in the interval: a peak, not a mean of per-update peaks."""

    def __init__(self):
        self.peak = None

    def update(self, value):
        self.peak = value if self.peak is None else max(self.peak, value)

    def reset(self):
        self.peak = None

    def state_dict(self):
        return {"peak": self.peak}

    def load_state_dict(self, state_dict):
        self.peak = state_dict.get("peak")

    @property
    def smoothed_value(self):
        return None if self.peak is None else round(self.peak)


# fairseq restores the meters of a checkpoint by looking their class name up in its meters
# module: without this line a checkpoint holding a PeakMeter could not be resumed.
setattr(meters, PeakMeter.__name__, PeakMeter)


@dataclass
class NodeTranslationConfig(TranslationConfig):
    """fairseq's translation settings, and the run's limits (fairseq's own interpolation of
    another group's setting, as ``train_subset``): whether an epoch is the last decides what
    becomes of its deferred batches."""

    max_epoch: int = II("optimization.max_epoch")
    max_update: int = II("optimization.max_update")
    # what a stopped run says is on disk; None in an exported model (export.py clears paths)
    save_dir: Optional[str] = II("checkpoint.save_dir")


@register_task("node_translation", dataclass=NodeTranslationConfig)
class NODETranslationTask(TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._live_batches = 0  # batches of the current update that reached the optimizer
        self.stepped = None  # whether the last update took an optimizer step (fairseq_fixes 7)
        self._deferred: List[Tuple[int, dict]] = []  # (epoch, batch) over budget this epoch, on the CPU
        self._replay: List[Tuple[int, dict]] = []  # deferred in an earlier epoch, to train on now
        self._train_itr = None  # the training set's epoch iterator (to see an epoch end)
        self._epoch = 0
        self._epoch_steps = 0  # optimizer steps taken in this epoch
        self._idle_epochs = 0  # epochs in a row that took none
        self._ended = False  # the run's last update is done
        self._interactive = None  # (token lists, number of the first line): fairseq-interactive's input
        self._lines_read = 0

    def build_model(self, cfg, from_checkpoint=False):
        """fairseq builds a model to load a checkpoint into with ``from_checkpoint`` (generate,
        interactive, validate, the hub; not a resumed training): the model then checks only
        what its solver needs (model.NODETransformerModel.build_model)."""
        self.node_loading_checkpoint = from_checkpoint
        try:
            return super().build_model(cfg, from_checkpoint)
        finally:
            self.node_loading_checkpoint = False

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        """A data directory that is not there, or not fairseq-preprocess's, stops with one line."""
        paths = utils.split_paths(cfg.data) if cfg.data else [""]
        if not os.path.isdir(paths[0]):
            raise SystemExit(f"node_transformer: error: data directory {paths[0]!r} does not exist "
                             "(the --destdir of fairseq-preprocess)")
        langs = [lang for lang in (cfg.source_lang, cfg.target_lang) if lang]
        needed = [f"dict.{lang}.txt" for lang in langs]
        present = [n for n in os.listdir(paths[0]) if n.startswith("dict.") and n.endswith(".txt")]
        lacking = [n for n in needed if n not in present] or ([] if present else ["dict.*.txt"])
        if lacking:
            raise SystemExit(f"node_transformer: error: data directory {paths[0]} holds no "
                             f"{' / '.join(lacking)}: not a directory fairseq-preprocess wrote (--destdir)")
        return super().setup_task(cfg, **kwargs)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        try:
            return super().load_dataset(split, epoch, combine, **kwargs)
        except FileNotFoundError as e:  # fairseq's "Dataset not found: SPLIT (DIR)"
            raise SystemExit(f"node_transformer: error: {e}: no {split}.* files there (the split "
                             "names of fairseq-preprocess: --trainpref, --validpref, --testpref)") from None

    # -- fairseq-interactive: a line too long is skipped, the others translated -----------

    def get_interactive_tokens_and_lengths(self, lines, encode_fn):
        tokens, lengths = super().get_interactive_tokens_and_lengths(lines, encode_fn)
        self._interactive = (tokens, self._lines_read)
        self._lines_read += len(lines)
        return tokens, lengths

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        dataset = super().build_dataset_for_inference(src_tokens, src_lengths, constraints=constraints)
        if self._interactive is not None and src_tokens is self._interactive[0]:
            dataset.node_first_line = self._interactive[1]  # fairseq-interactive's lines
        return dataset

    def filter_indices_by_size(self, indices, dataset, max_positions=None, ignore_invalid_inputs=False):
        """fairseq stops at an input over the model's positions; in fairseq-interactive, where
        each line is its own input, that line is named and skipped, the others translated."""
        first = getattr(dataset, "node_first_line", None)
        if first is None or ignore_invalid_inputs:
            return super().filter_indices_by_size(indices, dataset, max_positions, ignore_invalid_inputs)
        kept, too_long = dataset.filter_indices_by_size(indices, max_positions)
        for i in too_long:
            logger.warning("input line %d (S-%d) has %d tokens with end of sentence, more than the "
                           "model's %s source positions: skipped", first + i + 1, first + i,
                           dataset.src_sizes[i], _source_positions(max_positions))
        return kept

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # fairseq main drops the last batch when its size is not a multiple of
        # --required-batch-size-multiple: generate would print 96 of 100 translations and
        # training would never see the longest sentences. Every sentence must be used.
        kwargs["required_batch_size_multiple"] = 1
        itr = super().get_batch_iterator(dataset, *args, **kwargs)
        if dataset is self.datasets.get(self._train_subset()):
            self._train_itr = itr
        return itr

    def _train_subset(self) -> Optional[str]:
        try:  # an interpolation of fairseq's config, unresolved outside fairseq-train
            return self.cfg.train_subset
        except Exception:
            return None

    def _limit(self, name: str) -> int:
        """--max-epoch / --max-update of fairseq-train (0: none, and outside fairseq-train)."""
        try:
            return int(getattr(self.cfg, name) or 0)
        except Exception:
            return 0

    def _on_disk(self) -> str:
        """The checkpoints in --save-dir, for a run that stops: which files, of which epoch
        and update count (fairseq's own record in each)."""
        try:
            save_dir = self.cfg.save_dir
        except Exception:  # outside fairseq-train
            return ""
        if not save_dir:
            return ""
        names = sorted(n for n in os.listdir(save_dir)
                       if n.startswith("checkpoint") and n.endswith(".pt")) if os.path.isdir(save_dir) else []
        if not names:
            return f"; no checkpoint in {save_dir}"
        groups: Dict[str, List[str]] = {}
        for name in names:
            try:
                state = torch.load(os.path.join(save_dir, name), map_location="cpu", weights_only=False)
                itr = state["extra_state"]["train_iterator"]  # where a resumed run goes on
                updates = state["optimizer_history"][-1]["num_updates"]
                epoch = (f"the end of epoch {itr['epoch'] - 1}" if itr.get("iterations_in_epoch", 0) == 0
                         else f"inside epoch {itr['epoch']}")
                what = f"{epoch} at {updates} update{'s' * (updates != 1)}"
                what += " (an untrained model)" if updates == 0 else ""
            except Exception:  # noqa: BLE001  (a file being written, or not fairseq's)
                what = "unreadable"
            groups.setdefault(what, []).append(name)
        return f"; in {save_dir}: " + "; ".join(f"{', '.join(n)} from {what}" if what != "unreadable"
                                                else f"{', '.join(n)} unreadable"
                                                for what, n in groups.items())

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        self._epoch, self._epoch_steps = epoch, 0
        if self._deferred:
            logger.info("epoch %d: %d deferred batches will be trained on again", epoch, len(self._deferred))
        self._replay.extend(self._deferred)
        self._deferred = []

    # -- logs with one shape -------------------------------------------------------------

    def _log_keys(self, model, criterion, training: bool) -> Dict[str, float]:
        """Every key a log of this model can hold, at zero: workers sum their logs key by key
        (fairseq's fast stats sync), so a skipped batch's log must look like a live one's."""
        # The criterion logs loss and nll_loss as tensors (fairseq avoids a device sync per
        # batch), the counts as numbers; workers split the summed log by that, so zeros
        # must have the same types as a live log's values.
        zero = torch.zeros((), device=next(model.parameters()).device)
        keys = {"loss": zero, "nll_loss": zero, **dict.fromkeys(("ntokens", "nsentences", "sample_size", BATCHES), 0)}
        if getattr(criterion, "report_accuracy", False):
            keys.update(n_correct=0, total=0)
        for side, tag in SIDES:
            if depth_blocks(getattr(model, side, None)):
                keys[nfe_key(tag, FORWARD)] = 0
                if training:
                    keys[nfe_key(tag, BACKWARD)] = 0
        if training:
            coefficients = node_settings(model).regularisation().coefficients
            for name in PENALTY_NAMES:
                if coefficients[name] > 0:
                    keys[penalty_key(name)] = 0.0
            if coefficients["error"] > 0:
                for side, tag in SIDES:
                    if ode_blocks(getattr(model, side, None)):
                        keys[error_key(tag)] = 0.0
                        keys[error_batches_key(tag)] = 0
        keys.update(dict.fromkeys(COUNTERS if training else VALID_COUNTERS, 0))
        return keys

    def _shaped(self, log: dict, model, criterion, training: bool) -> dict:
        return {**self._log_keys(model, criterion, training), **log}

    # -- one batch, collectively ---------------------------------------------------------

    def _agree(self, error: Optional[BaseException], model) -> Optional[BaseException]:
        """Whether any worker failed: every worker gets the same answer."""
        group, world = _world(model)
        if world == 1:
            return error
        device = next(model.parameters()).device
        flag = torch.tensor([0.0 if error is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=group)
        if flag.item() == 0:
            return None
        return error or _OtherWorkerFailed(f"a solve failed on {int(flag.item())} other worker(s)")

    def _attempt(self, sample, model, criterion, optimizer, update_num, ignore_grad):
        """Forward and backward of one batch (fairseq's train_step, split in two so that the
        workers can agree between them). Returns (output, None) or (None, error); a failed
        batch leaves the gradients as they were before it."""
        saved = _save_grads(model)
        reset_nfe(model)
        model.train()
        model.set_num_updates(update_num)
        error = None
        try:
            with torch.autograd.profiler.record_function("forward"):
                with torch.autocast("cuda", enabled=isinstance(optimizer, AMPOptimizer)):
                    loss, sample_size, log = PenalisedCriterion(criterion)(model, sample)
        except SOLVER_ERRORS as e:
            error = e
        error = self._agree(error, model)
        if error is not None:  # nobody runs a backward for this batch
            return None, error
        if ignore_grad:
            loss *= 0
        try:
            with torch.autograd.profiler.record_function("backward"), \
                    record_backward_overruns(model) as overruns:
                optimizer.backward(loss)
            error = overruns[0] if overruns else None
        except SOLVER_ERRORS as e:
            error = e
        error = self._agree(error, model)
        if error is not None:
            _restore_grads(model, saved)
            return None, error
        log.update(collect_nfe(model, backward=True))
        log[BATCHES] = 1
        return (loss, sample_size, log), None

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        node = node_settings(model)
        policy = node.node_on_budget
        out, error = self._attempt(sample, model, criterion, optimizer, update_num, ignore_grad)
        if error is not None:
            if policy == "error":
                raise _stop(error)
            failed_nfe = collect_nfe(model, backward=True)
            if policy == "fixed-step":
                steps = node.node_fallback_steps
                logger.warning("solving the batch again with rk4, %d steps: %s", steps, error)
                with fixed_step_fallback(model, steps):
                    out, again = self._attempt(sample, model, criterion, optimizer, update_num, ignore_grad)
                if again is not None:  # rk4 on a fixed grid failed too (non-finite state)
                    raise again
                out = _merge(out, (0, 0, {**failed_nfe, FIXED_STEP: 1}))
            else:
                deferred = policy == "defer" and not ignore_grad
                if deferred:
                    self._deferred.append((self._epoch, utils.move_to_cpu(sample)))
                counter = DEFERRED if deferred else SKIPPED
                logger.warning("%s batch of %d sentences: %s", "deferred" if deferred else "skipped",
                               sample.get("nsentences", 0), error)
                _sync_restored_grads(model)
                log = {**failed_nfe, BATCHES: 1, counter: 1}
                return torch.zeros(()), 0, self._shaped(log, model, criterion, True)
        self._live_batches += 1
        # Every worker asks, a worker whose batch is fairseq's filler (ignore_grad: the
        # epoch's batches do not split evenly) too: a collective that one worker leaves out
        # pairs the others' with its next one, and gloo aborts. A filler step offers no
        # deferred batch of its own (fairseq zeroes its sample size and logs).
        offer = not ignore_grad
        if self._wants_replay(model, offer):
            out = self._train_replayed(out, sample, model, criterion, optimizer, update_num, offer)
        return out[0], out[1], self._shaped(out[2], model, criterion, True)

    def _wants_replay(self, model, offer: bool = True) -> bool:
        """Whether any worker has a deferred batch to train now (all must take part)."""
        mine = offer and bool(self._replay)
        group, world = _world(model)
        if world == 1:
            return mine
        flag = torch.tensor([float(mine)], device=next(model.parameters()).device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return flag.item() > 0

    def _train_replayed(self, out, sample, model, criterion, optimizer, update_num, offer=True):
        """One deferred batch joins this step; over budget again, it is dropped for good.
        A worker without one runs the live batch again with its gradient ignored, so that
        every worker runs the same number of backwards."""
        device = next(model.parameters()).device
        mine = offer and bool(self._replay)
        replay = utils.apply_to_sample(lambda t: t.to(device), self._replay.pop(0)[1]) if mine else sample
        again, error = self._attempt(replay, model, criterion, optimizer, update_num, not mine)
        if error is not None:
            logger.warning("dropping a deferred batch, over budget again: %s", error)
            _sync_restored_grads(model)
            return _merge(out, (0, 0, {SKIPPED: int(mine)}))
        if not mine:
            return out
        return _merge(out, (again[0], again[1], {**again[2], REPLAYED: 1}))

    def optimizer_step(self, optimizer, model, update_num):
        skip = self._live_batches == 0
        self._live_batches = 0
        self._epoch_steps += not skip
        self.stepped = not skip  # a skipped update is not counted (fairseq_fixes 7)
        max_update = self._limit("max_update")
        if not skip and max_update and update_num + 1 >= max_update:
            self._end_run(f"--max-update {max_update}")
        if self._train_itr is not None and self._train_itr.end_of_epoch():
            self._end_epoch(model)
        if skip:
            # Only skipped batches in this update: no step. The grad scaler of --amp has
            # unscaled this update's (zero) gradients; it must be told the update is over.
            scaler = getattr(optimizer, "scaler", None)
            if isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled():
                scaler.update()
            optimizer.zero_grad()
            return
        super().optimizer_step(optimizer, model, update_num)

    def _end_epoch(self, model) -> None:
        """The epoch's last update: an epoch that trained nothing stops fairseq-train, before
        its validation and checkpoint (those of earlier epochs stay as they are). Every worker
        stops at the same update: the skip decisions are collective. Under --node-on-budget
        defer one such epoch is let through, its batches coming back in the next one, unless
        it is the last of --max-epoch."""
        self._idle_epochs = 0 if self._epoch_steps else self._idle_epochs + 1
        max_epoch = self._limit("max_epoch")
        last = bool(max_epoch) and self._epoch >= max_epoch
        node = node_settings(model)
        if self._idle_epochs == 0 or (node.node_on_budget == "defer" and self._idle_epochs == 1 and not last):
            if last:
                self._end_run(f"--max-epoch {max_epoch}")
            return
        epochs = f"epoch {self._epoch}"
        if self._idle_epochs > 1:
            epochs = f"epochs {self._epoch - 1} and {self._epoch}"
        why = ""
        if node.node_on_budget == "defer":
            left = self._end_run(f"--max-epoch {max_epoch}" if last else "two idle epochs in a row")
            why = f", and no later epoch trains its {left} deferred batches"
            if last:
                why += f" (--max-epoch {max_epoch})"
        raise SystemExit(f"node_transformer: error: {epochs} trained nothing: a solve failed in every "
                         f"update (--node-on-budget {node.node_on_budget}){why}; stopped before saving a "
                         "checkpoint of it: raise --node-max-nfe or use --node-on-budget fixed-step"
                         + self._on_disk())

    def _end_run(self, reason: str) -> int:
        """The run's last update is done: deferred batches no later update trains are named
        (how many, from which epoch). Returns how many."""
        if self._ended:
            return 0
        self._ended = True
        left = self._replay + self._deferred
        if left:
            epochs = sorted({epoch for epoch, _ in left})
            counts = ", ".join(f"{sum(e == epoch for e, _ in left)} from epoch {epoch}" for epoch in epochs)
            logger.warning("%d deferred batches were never trained (%s): the run ends here (%s); "
                           "they count in node_deferred, not in node_replayed", len(left), counts, reason)
        return len(left)

    def valid_step(self, sample, model, criterion):
        reset_nfe(model)
        node = node_settings(model)
        policy = node.node_on_budget
        try:
            loss, sample_size, log = super().valid_step(sample, model, criterion)
        except SOLVER_ERRORS as e:
            if policy == "error":
                raise _stop(e) from None
            if policy != "fixed-step":
                log = {**collect_nfe(model, backward=False), BATCHES: 1, SKIPPED: 1}
                return torch.zeros(()), 0, self._shaped(log, model, criterion, False)
            with fixed_step_fallback(model, node.node_fallback_steps):
                loss, sample_size, log = super().valid_step(sample, model, criterion)
            log[FIXED_STEP] = 1
        log.update(collect_nfe(model, backward=False))
        log[BATCHES] = 1
        return loss, sample_size, self._shaped(log, model, criterion, False)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """fairseq-generate / interactive: also log the decoder's evaluations, per sentence
        and in total (running over the whole run)."""
        decoders = [m.decoder for m in models if hasattr(getattr(m, "decoder", None), "generation_nfe")]
        for d in decoders:
            d.generation_nfe.reset()
        hyps = super().inference_step(generator, models, sample, prefix_tokens, constraints)
        for d in decoders:
            g = d.generation_nfe
            self._generation_nfe = getattr(self, "_generation_nfe", 0) + g.total
            logger.info("generation NFE of the decoder: %.1f per sentence, %d for this batch of %d, "
                        "%d so far", g.per_sentence(len(hyps), getattr(generator, "beam_size", 1)),
                        g.total, len(hyps), self._generation_nfe)
        return hyps

    def reduce_metrics(self, logging_outputs, criterion):
        if sum(log.get("sample_size", 0) for log in logging_outputs) > 0:
            super().reduce_metrics(logging_outputs, criterion)
        else:
            # Every batch was skipped: nothing to average. Weight 0 leaves the interval's
            # mean to live updates; alone, inf keeps a skipped validation from ever
            # counting as the best checkpoint.
            for key in ("loss", "nll_loss"):
                metrics.log_scalar(key, math.inf, 0, round=3)
        batches = sum(log.get(BATCHES, 0) for log in logging_outputs)
        keys = sorted({k for log in logging_outputs for k in log
                       if k.startswith((NFE_PREFIX, PENALTY_PREFIX, ERROR_PREFIX))})
        for key in keys:
            total = sum(log.get(key, 0) for log in logging_outputs)
            # Mean per batch (summed over a side's blocks), over batches and workers: fairseq
            # may hand over the logs of all workers already summed into one. An error estimate
            # is averaged over the batches that had one; none in the interval: not logged.
            count = batches
            if key.startswith(ERROR_PREFIX):
                tag = key[len(ERROR_PREFIX):]
                count = sum(log.get(error_batches_key(tag), 0) for log in logging_outputs)
            if count:
                metrics.log_scalar(key, total / count, count,
                                   round=1 if key.startswith(NFE_PREFIX) else 3)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # fairseq resets the peak after each update: the meter keeps the interval's max.
            metrics.log_custom(PeakMeter, CUDA_PEAK, torch.cuda.max_memory_allocated() / 2 ** 20)
        for key in COUNTERS:
            count = sum(log.get(key, 0) for log in logging_outputs)
            if count:
                metrics.log_scalar_sum(key, count)


def _source_positions(max_positions) -> str:
    """The source side of fairseq's max_positions (a number, or a (source, target) pair)."""
    return str(max_positions[0] if isinstance(max_positions, (tuple, list)) else max_positions)


def _save_grads(model) -> Dict[torch.nn.Parameter, torch.Tensor]:
    return {p: p.grad.clone() for p in model.parameters() if p.grad is not None}


def _restore_grads(model, saved: Dict[torch.nn.Parameter, torch.Tensor]) -> None:
    """Back to the gradients before the failed batch: a half-done backward is unusable.

    Only the model's gradients are touched: the optimizer's zero_grad would also forget,
    in fairseq's FP16Optimizer, that earlier batches' gradients still need copying to fp32.
    """
    for p in model.parameters():
        p.grad = saved.get(p)


def _sync_restored_grads(model) -> None:
    """With torch's DistributedDataParallel the last batch of an update all-reduces the
    gradients in its backward. When that batch failed on some worker, its backward never
    ran, or ran and was undone, so the update's gradients are averaged here instead.
    (fairseq's legacy_ddp all-reduces after the update: nothing to do.)"""
    group, world = _world(model)
    if world == 1 or not getattr(model, "require_backward_grad_sync", False):
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
            p.grad.div_(world)
