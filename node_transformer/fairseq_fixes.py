"""Two small workarounds for the fairseq we install, applied when the plugin is imported.

1. torch >= 2.6 loads with ``weights_only=True`` by default, and fairseq's checkpoints hold
   a few Python objects besides tensors, so fairseq-generate and resumed training fail with
   "Unsupported global". Allow-listing exactly those types keeps torch's safe loader on; the
   alternative (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) would unpickle anything.
2. fairseq main drops the last batch when its size is not a multiple of
   ``--required-batch-size-multiple`` (default 8): ``fairseq-generate --user-dir ...`` with
   fairseq's own translation task printed 16 hypotheses for 23 inputs, and training never saw
   some sentences. ``data_utils.batch_by_size`` is wrapped to hand that batch back; the other
   batches keep the multiple.
"""

import argparse

import numpy as np
import torch
from fairseq.data import data_utils

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
