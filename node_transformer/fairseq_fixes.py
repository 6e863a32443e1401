"""Seven small workarounds for the fairseq we install, applied when the plugin is imported.

1. torch >= 2.6 loads with ``weights_only=True`` by default, and fairseq's checkpoints hold
   a few Python objects besides tensors, so fairseq-generate and resumed training fail with
   "Unsupported global". Allow-listing exactly those types keeps torch's safe loader on; the
   alternative (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) would unpickle anything.
2. fairseq main drops the last batch when its size is not a multiple of
   ``--required-batch-size-multiple`` (default 8): ``fairseq-generate --user-dir ...`` with
   fairseq's own translation task printed 16 hypotheses for 23 inputs, and training never saw
   some sentences. ``data_utils.batch_by_size`` is wrapped to hand that batch back; the other
   batches keep the multiple.
3. fairseq parses the command line once before it adds the flags of the chosen ``--arch``,
   ``--task``, criterion, optimizer...; ``--help`` acts in that first parse, so
   ``fairseq-train --user-dir node_transformer --arch node_transformer --help`` listed no
   ``--node-*`` flag. ``options.parse_args_and_arch`` is wrapped: with ``-h``/``--help`` it
   lets fairseq add every chosen component's flags first, then prints the help and exits.
4. fairseq loads batches in a daemon thread (``iterators.BackgroundConsumer``). When
   fairseq-train stops in mid-epoch (``--node-on-budget error``, any SystemExit), that thread
   may be inside torch; Python 3.11 and 3.12 end daemon threads at finalisation with
   ``pthread_exit``, whose unwinding through torch's C++ frames aborts the process with
   "terminate called without an active exception" after our one-line error (once in three
   full test runs). An ``atexit`` hook, which runs before finalisation, lets each such thread finish the
   batch it is fetching and return.
5. A checkpoint torch cannot read (truncated, partly written) ended fairseq-generate and a
   resumed fairseq-train in a traceback through torch's zip reader ("OSError: [Errno 22]").
   ``checkpoint_utils.load_checkpoint_to_cpu`` is wrapped: when its load fails and a plain
   ``torch.load`` of the file fails too, it raises ``UnreadableCheckpoint`` naming the file.
6. The command-line tools' checkpoint loads (``Trainer.load_checkpoint`` for resuming,
   ``checkpoint_utils.load_model_ensemble`` for fairseq-generate and fairseq-interactive) turn
   the plugin's ``input_errors.NodeInputError`` (unreadable, an old format), also when fairseq
   wrapped it, into one line and a non-zero status; so is a resume whose checkpoint holds
   other parameters than the model (another --arch or --node-block: fairseq's "please ensure
   that the architectures match" came after torch's list of every key). The hub
   (``from_pretrained``) keeps the exceptions.
7. fairseq's Trainer counts every ``train_step`` as an update, also one in which the task
   took no optimizer step (every batch of it skipped or deferred): ``num_updates``, the
   learning-rate schedule and ``--max-update`` would count steps never taken. fairseq itself
   does not count an fp16 overflow, which takes no step. ``Trainer.train_step`` is wrapped:
   when the task's ``stepped`` says False, the count is put back (``set_num_updates``, which
   also sets the schedule's rate and the model's count).

With 6, a resume whose checkpoint was trained with other solver settings than the run's
(--node-method and the other flags that feed the solver; the parameters fit whatever the
solver) says so in one log line: the checkpoint's settings and the ones now used.
"""

import argparse
import atexit
import logging
import queue
import sys
import threading
import time

import numpy as np
import torch
from fairseq import checkpoint_utils, options
from fairseq.data import data_utils, iterators
from fairseq.trainer import Trainer

from .input_errors import (PREFIX, UnreadableCheckpoint, describe_mismatch, find, first_line,
                           stop_with_one_line)

logger = logging.getLogger(__name__)

SAFE_GLOBALS = [argparse.Namespace]

if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


def _batch_by_size_keeping_every_index(indices, *args, **kwargs):
    batches = _fairseq_batch_by_size(indices, *args, **kwargs)
    used = sum(len(b) for b in batches)
    if used < len(indices):  # batches are consecutive runs of indices: the tail was dropped
        batches = list(batches) + [np.asarray(indices[used:], dtype=np.int64)]
    return batches


if not hasattr(data_utils.batch_by_size, "keeps_every_index"):  # once, however often imported
    _fairseq_batch_by_size = data_utils.batch_by_size
    _batch_by_size_keeping_every_index.keeps_every_index = True
    data_utils.batch_by_size = _batch_by_size_keeping_every_index


HELP = ("-h", "--help")


def _parse_args_and_arch_with_full_help(parser, input_args=None, parse_known=False,
                                        suppress_defaults=False, modify_parser=None):
    argv = list(sys.argv[1:] if input_args is None else input_args)
    if not any(a in HELP for a in argv):
        return _fairseq_parse_args_and_arch(parser, input_args, parse_known, suppress_defaults,
                                            modify_parser)
    calls = []

    def add_then_help(p):
        # fairseq calls this before its first parse and again once every chosen
        # component's flags are on the parser: then the help is complete.
        if modify_parser is not None:
            modify_parser(p)
        calls.append(p)
        if len(calls) == 2:
            p.print_help()
            sys.exit(0)

    return _fairseq_parse_args_and_arch(parser, [a for a in argv if a not in HELP], parse_known,
                                        False, add_then_help)


if not hasattr(options.parse_args_and_arch, "full_help"):  # once, however often imported
    _fairseq_parse_args_and_arch = options.parse_args_and_arch
    _parse_args_and_arch_with_full_help.full_help = True
    options.parse_args_and_arch = _parse_args_and_arch_with_full_help


def stop_background_loaders(timeout: float = 10.0) -> bool:
    """Make fairseq's loader threads return (True when none is left running): each stops after
    the batch it is fetching, the queues are emptied so that no put blocks it. Batches left in
    the queues are dropped: this runs only at exit."""
    threads = [t for t in threading.enumerate()
               if isinstance(t, iterators.BackgroundConsumer) and t.is_alive()]
    for t in threads:
        t._max_len = 0  # its loop breaks after its next put
    deadline = time.monotonic() + timeout
    for t in threads:
        while t.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    t._queue.get_nowait()
            except queue.Empty:
                pass
            t.join(0.05)
    return not any(t.is_alive() for t in threads)


if not getattr(iterators, "_node_transformer_stops_loaders", False):  # once, however often imported
    iterators._node_transformer_stops_loaders = True
    atexit.register(stop_background_loaders)


def _torch_reads(path) -> bool:
    try:
        torch.load(path, map_location="cpu")
        return True
    except Exception:
        return False


_RESUMING: list = []  # while a resume loads: a list per resume, of the model configs it read


def _load_checkpoint_naming_unreadable_files(path, *args, **kwargs):
    try:
        state = _fairseq_load_checkpoint_to_cpu(path, *args, **kwargs)
    except Exception as e:
        if find(e) is not None or _torch_reads(path):
            raise  # the file reads: the failure is elsewhere
        raise UnreadableCheckpoint(f"{path} is not a checkpoint torch can read (truncated or "
                                   f"partly written?): {first_line(e)}") from e
    if _RESUMING:
        _RESUMING[-1].append((state.get("cfg") or {}).get("model"))
    return state


def _name_solver_change(filename, saved_model_cfg, model_cfg) -> None:
    """One log line when the checkpoint's solver settings differ from this run's."""
    from .config import NodeConfig, flag  # the plugin's config module imports fairseq's models

    if saved_model_cfg is None or getattr(saved_model_cfg, "arch", None) != getattr(model_cfg, "arch", None):
        return
    names = [f.name for f in NodeConfig.node_fields() if "solver" in f.metadata]
    default = NodeConfig()
    changed = [(n, getattr(saved_model_cfg, n, getattr(default, n)), getattr(model_cfg, n, getattr(default, n)))
               for n in names]
    changed = [(n, a, b) for n, a, b in changed if str(a) != str(b)]
    if changed:
        logger.info("resuming from %s, trained with %s; this run solves with %s", filename,
                    ", ".join(f"{flag(n)} {a}" for n, a, _ in changed),
                    ", ".join(f"{flag(n)} {b}" for n, _, b in changed))


def _parameters_differ(trainer, filename):
    """What differs between the trainer's model and the checkpoint's parameters, or None."""
    try:
        state = _fairseq_load_checkpoint_to_cpu(filename)
    except Exception:
        return None
    problem = describe_mismatch(trainer.get_model().state_dict(), state.get("model") or {})
    arch = getattr((state.get("cfg") or {}).get("model"), "arch", None)
    if problem and arch and arch != getattr(trainer.cfg.model, "arch", arch):
        problem = f"it was written by --arch {arch}; {problem}"
    return problem


def _resume_stopping_with_one_line(self, filename, *args, **kwargs):
    read: list = []
    _RESUMING.append(read)
    try:
        out = _fairseq_trainer_load_checkpoint(self, filename, *args, **kwargs)
        if read:
            _name_solver_change(filename, read[0], self.cfg.model)
        return out
    except Exception as e:
        if find(e) is not None:
            raise stop_with_one_line(e, filename, "cannot resume from") from None
        problem = _parameters_differ(self, filename)
        if problem is None:
            raise
        raise SystemExit(f"{PREFIX}cannot resume from {filename}: {problem}") from None
    finally:
        _RESUMING.pop()


def _load_ensemble_stopping_with_one_line(filenames, *args, **kwargs):
    try:
        return _fairseq_load_model_ensemble(filenames, *args, **kwargs)
    except Exception as e:
        if find(e) is None:
            raise
        raise stop_with_one_line(e, ":".join(filenames), "cannot load") from None


def _train_step_counting_steps_taken(self, samples, raise_oom=False):
    before = self.get_num_updates()
    out = _fairseq_train_step(self, samples, raise_oom)
    if getattr(self.task, "stepped", True) is False and self.get_num_updates() > before:
        self.set_num_updates(before)
    return out


if not getattr(checkpoint_utils, "_node_transformer_fixes", False):  # once, however often imported
    checkpoint_utils._node_transformer_fixes = True
    _fairseq_load_checkpoint_to_cpu = checkpoint_utils.load_checkpoint_to_cpu
    checkpoint_utils.load_checkpoint_to_cpu = _load_checkpoint_naming_unreadable_files
    _fairseq_load_model_ensemble = checkpoint_utils.load_model_ensemble
    checkpoint_utils.load_model_ensemble = _load_ensemble_stopping_with_one_line
    _fairseq_trainer_load_checkpoint = Trainer.load_checkpoint
    Trainer.load_checkpoint = _resume_stopping_with_one_line
    _fairseq_train_step = Trainer.train_step
    Trainer.train_step = _train_step_counting_steps_taken
