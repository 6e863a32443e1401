"""Penalties that keep learned dynamics cheap to solve (RNODE, Finlay et al. 2020; the
solver's error estimate, Pal et al.), a random end time (STEER, Ghosh et al. 2020) and a random
number of fixed-grid steps per update (--node-train-steps).

RNODE adds to the loss the kinetic energy  K = int ||f(t, h)||^2 dt  and the Jacobian
Frobenius norm  J = int ||df/dh||_F^2 dt  (estimated with one Gaussian probe e per solve:
||e^T df/dh||^2, Hutchinson's trick), each a sum over the real positions (Time x Batch, pads
left out) of the block's state: coefficient C weighs C per position, per target token in the
decoder and per source token (its end-of-sentence included) in the encoder. A sum, so that a
batch's penalty is the sum of its sentences' penalties alone and batching changes neither the
objective nor its gradient (exactly so on a fixed grid).

Both integrals are solved with h as two extra scalar channels of the state, so they cost no
extra evaluation of f; the Jacobian term costs one vector-Jacobian product per evaluation.
The channels integrate the mean over the real positions, and the block multiplies by their
number after the solve (the same integral on a fixed grid): the channels keep the scale of one
position in the solver's error norm, whatever the batch's size or padding.

The error penalty (Pal, Edelman and Rackauckas 2023; "global": ERNODE, 2021) adds W x the
solver's own error estimate (odeint_ext's ``stats.local_error``: the error ratio that the
step-size controller compares with 1, of one accepted step drawn at random, "local", or summed
over every accepted step, "global"), times the real positions of the block's state, so that W
weighs W per token as C does. The ratio is a norm over all the batch's real positions at steps
the whole batch chose, so it cannot be additive over sentences: each token of a batch weighs
the batch's ratio (an RMS over its positions), i.e. a sentence of n tokens adds W n e, e its
batch's ratio, where alone it would add W n e_alone. Per token rather than per sentence:
against the criterion's per-token loss W keeps its weight whatever the lengths. With K or J
on, the ratio is the controller's over the whole state: the larger of h's and the channels'.

The random step count (after Ott et al., "ResNet After All?", ICLR 2021: a model trained on
one fixed step above a critical size fits that step's error, not a flow) trains a fixed-grid
block on a number of steps drawn per update, so that no single discretisation is the one the
weights fit. The draw depends on the update number alone: every worker, and every block of
the model, takes the same step count in an update, so their solves cost the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import contextlib

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass(frozen=True)
class Regularisation:
    kinetic: float = 0.0  # coefficient of K (--node-kinetic-energy)
    jacobian: float = 0.0  # coefficient of J (--node-jacobian-norm)
    steer_b: float = 0.0  # training end time drawn from U(T - b, T + b) (--node-steer-b)
    error: float = 0.0  # coefficient of the solver's error estimate (--node-error-penalty)
    error_estimate: str = "local"  # which estimate: "local" or "global" (--node-error-estimate)
    train_steps: Tuple[int, ...] = ()  # training steps drawn per update (--node-train-steps)

    @property
    def coefficients(self) -> Dict[str, float]:
        """The coefficient of each penalty, by the name ODEBlock.penalties gives it."""
        return {"kinetic": self.kinetic, "jacobian": self.jacobian, "error": self.error}

    @property
    def integrates_penalties(self) -> bool:
        """Whether the solve integrates K or J as extra channels of the state."""
        return self.kinetic > 0 or self.jacobian > 0

    @property
    def penalised(self) -> bool:
        return self.integrates_penalties or self.error > 0


def _per_position(x: Tensor, keep: Optional[Tensor]) -> Tensor:
    """Mean of ||x||^2 over the real positions (``keep``: T x B x 1, 1 at real positions;
    None: every position is real)."""
    squares = x.pow(2).sum(-1)
    if keep is None:
        return squares.mean().reshape(1)
    keep = keep[..., 0]
    return ((squares * keep).sum() / keep.sum()).reshape(1)


class PenalisedDynamics(nn.Module):
    """(h, K, J) -> (f, ||f||^2, ||e^T df/dh||^2): the dynamics with the penalties' rates.

    Not registered as a submodule of the block (its parameters are the dynamics' own, and a
    second name for them would change the checkpoint's keys); made per solve.
    """

    def __init__(self, dynamics: nn.Module, jacobian: bool):
        super().__init__()
        self.dynamics = dynamics
        self.jacobian = jacobian

    def forward(self, t: Tensor, state, *, probe: Tensor = None, **inputs):
        h = state[0]
        keep = inputs.get("keep")  # the block's mask of real positions, when it has pads
        if not self.jacobian:
            f = self.dynamics(t, h, **inputs)
            return f, _per_position(f, keep), torch.zeros_like(state[2])
        # The vector-Jacobian product needs a graph even in the adjoint's forward solve
        # (run without grad); a graph of the product itself only when something will
        # differentiate it (direct backprop, or the adjoint's backward).
        outer = torch.is_grad_enabled()
        # The product is differentiated again: attention must take torch's plain "math"
        # path, since the fused CPU/GPU kernels have no second derivative.
        math_attention = sdpa_kernel(SDPBackend.MATH) if outer else contextlib.nullcontext()
        with torch.enable_grad(), math_attention:
            if not (outer and h.requires_grad):
                # A fresh leaf: views made in no-grad mode may claim requires_grad
                # without a graph to differentiate.
                h = h.detach().requires_grad_(True)
            f = self.dynamics(t, h, **inputs)
            ejac = torch.autograd.grad(f, h, probe, create_graph=outer)[0]
        if not outer:
            f, ejac = f.detach(), ejac.detach()
        return f, _per_position(f, keep), _per_position(ejac, keep)
