"""An ODE block: h(t1) = h(t0) + integral of f(t, h) dt, solved with odeint_ext.

The block owns the solver settings and the NFE record; the dynamics f live in dynamics.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from odeint_ext import SolveStats, is_adaptive, odeint_adjoint_ext, odeint_ext


@dataclass(frozen=True)
class SolverConfig:
    method: str = "dopri5"
    rtol: float = 1e-2
    atol: float = 1e-2
    ts: Tuple[float, ...] = (0.0, 1.0)
    max_num_steps: Optional[int] = None
    max_nfe: Optional[int] = None
    backprop: str = "adjoint"  # or "direct": backprop through the solver's operations
    steps: Optional[int] = None  # fixed-grid methods: steps over the whole interval

    def options(self) -> Optional[dict]:
        if is_adaptive(self.method):
            return {"max_num_steps": self.max_num_steps} if self.max_num_steps else None
        if self.steps:
            return {"step_size": (self.ts[-1] - self.ts[0]) / self.steps}
        return None  # the grid is ts itself


class ODEBlock(nn.Module):
    """Solves the dynamics over ``ts`` and returns the state at the last time.

    The adjoint is used only when gradients are needed; evaluation and generation solve
    without it. Each solve's SolveStats is kept (the last few) for NFE logging.
    """

    def __init__(self, dynamics: nn.Module, solver: SolverConfig):
        super().__init__()
        self.dynamics = dynamics
        self.solver = solver
        self.register_buffer("ts", torch.tensor(solver.ts, dtype=torch.float64), persistent=False)
        self.solves: deque = deque(maxlen=64)

    def forward(self, h0: Tensor, **inputs) -> Tensor:
        s = self.solver
        stats = SolveStats()
        self.solves.append(stats)
        kwargs = dict(inputs=inputs, rtol=s.rtol, atol=s.atol, method=s.method,
                      options=s.options(), max_nfe=s.max_nfe, stats=stats)
        ts = self.ts.to(h0.dtype)
        if s.backprop == "adjoint" and torch.is_grad_enabled():
            return odeint_adjoint_ext(self.dynamics, h0, ts, **kwargs)[-1]
        return odeint_ext(self.dynamics, h0, ts, **kwargs)[-1]
