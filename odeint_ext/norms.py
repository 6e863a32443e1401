"""Error norms whose gradient is finite where the error is exactly zero.

The error estimate (error_estimate.py) is differentiated through the controller's norm, an RMS.
The derivative of sqrt at 0 is infinite, and the square's gradient there is 0, so autograd
gives 0 x inf = NaN for every parameter whenever one part of the error is exactly zero: a
zero-initialised (pre-norm) flow at its start, or an integrated penalty channel (RNODE's
kinetic energy, Jacobian norm) with no error in a step. These norms have torchdiffeq's values
(``_rms_norm``, ``_mixed_norm``) and gradient 0 there instead.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x >= 0, with gradient 0 (not NaN) where x is 0."""
    positive = x > 0
    return torch.where(positive, x.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), torch.zeros_like(x))


def rms_norm(x: Tensor) -> Tensor:
    """sqrt(mean(x^2)): torchdiffeq's default norm of a tensor state."""
    return safe_sqrt(x.abs().pow(2).mean())


def mixed_norm(parts: Sequence[Tensor]) -> Tensor:
    """The largest RMS of the parts: torchdiffeq's default norm of a tuple state."""
    return torch.stack([rms_norm(p) for p in parts]).max()
