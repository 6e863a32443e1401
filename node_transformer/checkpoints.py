"""Let fairseq load its checkpoints under torch >= 2.6 without disabling weights_only.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and fairseq's checkpoints hold
a few Python objects besides tensors, so fairseq-generate and resumed training fail with
"Unsupported global". Allow-listing exactly those types keeps torch's safe loader on; the
alternative (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) would unpickle anything.
"""

import argparse

import torch

SAFE_GLOBALS = [argparse.Namespace]

if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
