"""Learned Runge-Kutta blocks: one step of an explicit RK scheme over the dynamics f, whose
combination weights are learned (--node-block rk2-gated / pc).

These are the blocks that later work found to beat plain layers at equal parameters: not an
ODE solved to a tolerance, but a layer that evaluates its f several times on the same weights
and learns how to mix the evaluations. They live beside ode_block.py (the torchdiffeq solve)
and share its record (NFE per forward) and the dynamics of dynamics.py. Backprop goes through
their few operations (no adjoint: a reverse solve of one large step would not give the
gradient of what the forward computed).

With a step h = t1 - t0 over --node-ts (one step, [0, 1] by default) and F(t, y) the dynamics:

* ``rk2-gated`` (ODE Transformer, Li et al., ACL 2022, "RK2-block with learnable gate"):
  F1 = F(t0, y), F2 = F(t0 + h, y + h F1), g = sigmoid(W [F1; F2] + b) per position,
  y' = y + h (g F1 + (1 - g) F2). One gate (2d + 1 parameters) is shared by the blocks of a
  side, as in the paper. W = 0, b = 0 at the start: g = 1/2, Heun's method. 2 evaluations.
* ``pc`` (PCformer, Li et al., NeurIPS 2024, predictor-corrector with EMA coefficients): a
  predictor of order 2 or 4 whose stage i of o is weighted by gamma_i = a (1 - a)^(o - i)
  (one learned a per block, a = 1/2 at the start), then a corrector that evaluates F at the
  prediction and mixes it with the first stage: y' = y + h (b F(t0 + h, y_pred) + (1 - b) F1),
  b learned, 1/2 at the start (the trapezoidal rule). PCformer's corrector is a multistep
  formula over the stages of earlier blocks too; ours looks at the block's own first stage
  only, so that each block stays one step and decoding caches stay per block. Order 2: 3
  evaluations; order 4 (classic RK4 stages): 5.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from odeint_ext import SolveStats

from .ode_block import DepthBlock

BLOCKS = ("ode", "rk2-gated", "pc")
PC_ORDERS = (2, 4)


def evaluations(block: str, pc_order: int = 2) -> Optional[int]:
    """Evaluations of f per forward of one block (None for ``ode``: the solver decides)."""
    return {"ode": None, "rk2-gated": 2, "pc": pc_order + 1}[block]


class RK2Gate(nn.Module):
    """ODE Transformer's gate g = sigmoid(W [F1; F2] + b), one value per position."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(2 * width, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        return torch.sigmoid(self.proj(torch.cat([f1, f2], dim=-1)))


class LearnedRKBlock(DepthBlock):
    """One step of a learned RK scheme over ``dynamics`` on [t0, t1] (see module docstring).

    Takes the same inputs as ODEBlock (``padding_mask`` holds pads fixed; the rest goes to
    the dynamics), so the layers of layers.py hold either."""

    def __init__(self, dynamics: nn.Module, ts: Tuple[float, ...] = (0.0, 1.0)):
        super().__init__()
        if len(ts) != 2:
            raise ValueError(f"a learned RK block takes one step over [t0, t1], got times {ts}")
        self.dynamics = dynamics
        self.t0, self.h = float(ts[0]), float(ts[1] - ts[0])

    def staged(self) -> bool:
        return True  # the same evaluations in the same order whatever the data

    def forward(self, h0: Tensor, padding_mask: Optional[Tensor] = None, **inputs) -> Tensor:
        stats = SolveStats()
        self.solves.append(stats)
        keep = None
        if padding_mask is not None and bool(padding_mask.any()):
            keep = (~padding_mask).t().unsqueeze(-1).to(h0.dtype)

        def f(t: float, y: Tensor) -> Tensor:
            stats.nfe_forward += 1
            out = self.dynamics(y.new_tensor(t), y, **inputs)
            return out if keep is None else out * keep

        return self.step(f, h0)

    def step(self, f: Callable[[float, Tensor], Tensor], y: Tensor) -> Tensor:
        raise NotImplementedError


class GatedRK2Block(LearnedRKBlock):
    """``--node-block rk2-gated``. ``gate``: the side's shared RK2Gate."""

    def __init__(self, dynamics: nn.Module, gate: RK2Gate, ts: Tuple[float, ...] = (0.0, 1.0)):
        super().__init__(dynamics, ts)
        self.gate = gate

    def describe(self) -> str:
        return "rk2-gated (2 evaluations)"

    def step(self, f, y):
        t0, h = self.t0, self.h
        f1 = f(t0, y)
        f2 = f(t0 + h, y + h * f1)
        g = self.gate(f1, f2)
        return y + h * (g * f1 + (1 - g) * f2)


class PredictorCorrectorBlock(LearnedRKBlock):
    """``--node-block pc`` of order 2 or 4 (--node-pc-order)."""

    def __init__(self, dynamics: nn.Module, order: int = 2, ts: Tuple[float, ...] = (0.0, 1.0)):
        super().__init__(dynamics, ts)
        if order not in PC_ORDERS:
            raise ValueError(f"pc order must be one of {PC_ORDERS}, got {order}")
        self.order = order
        # a = sigmoid(logit): 1/2 at the start, always inside (0, 1).
        self.a_logit = nn.Parameter(torch.zeros(()))
        self.b_logit = nn.Parameter(torch.zeros(()))

    def describe(self) -> str:
        return f"pc order {self.order} ({self.order + 1} evaluations)"

    def stage_weights(self) -> Tensor:
        """gamma_i = a (1 - a)^(o - i), i = 1..o: the last stage weighs most; they sum to
        1 - (1 - a)^o, below 1 (the predictor is damped, as in PCformer's EMA form)."""
        a = torch.sigmoid(self.a_logit)
        powers = torch.arange(self.order - 1, -1, -1, dtype=a.dtype, device=a.device)
        return a * (1 - a) ** powers

    def step(self, f, y):
        t0, h = self.t0, self.h
        f1 = f(t0, y)
        if self.order == 2:
            stages = [f1, f(t0 + h, y + h * f1)]
        else:  # the classic RK4 stages
            f2 = f(t0 + h / 2, y + h / 2 * f1)
            f3 = f(t0 + h / 2, y + h / 2 * f2)
            stages = [f1, f2, f3, f(t0 + h, y + h * f3)]
        gamma = self.stage_weights().to(y.dtype)
        predicted = y + h * sum(w * s for w, s in zip(gamma, stages))
        b = torch.sigmoid(self.b_logit).to(y.dtype)
        return y + h * (b * f(t0 + h, predicted) + (1 - b) * f1)
