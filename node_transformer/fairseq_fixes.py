"""Four small workarounds for the fairseq we install, applied when the plugin is imported.

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
"""

import argparse
import atexit
import queue
import sys
import threading
import time

import numpy as np
import torch
from fairseq import options
from fairseq.data import data_utils, iterators

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
