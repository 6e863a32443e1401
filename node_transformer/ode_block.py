"""An ODE block: h(t1) = h(t0) + integral of f(t, h) dt, solved with odeint_ext.

The block owns the solver settings, the NFE record and the RNODE/STEER options; the
dynamics f live in dynamics.py, the penalties' rates in regularisers.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from odeint_ext import SolveStats, is_adaptive, odeint_adjoint_ext, odeint_ext

from .regularisers import PenalisedDynamics, Regularisation


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
    first_step: Optional[float] = None  # adaptive methods: size of the first step tried
    min_step: Optional[float] = None  # adaptive methods: steps this small are accepted
    seminorm: bool = False  # adjoint backward: error norm without the parameter channels

    def options(self) -> Optional[dict]:
        if is_adaptive(self.method):
            opts = {"max_num_steps": self.max_num_steps, "first_step": self.first_step,
                    "min_step": self.min_step}
            return {k: v for k, v in opts.items() if v} or None
        if self.steps:
            return {"step_size": (self.ts[-1] - self.ts[0]) / self.steps}
        return None  # the grid is ts itself

    def fixed_step(self, steps: int) -> "SolverConfig":
        """The same solve on a grid of ``steps`` rk4 steps, without a budget: it cannot hang."""
        return replace(self, method="rk4", steps=steps, max_nfe=None, first_step=None,
                       min_step=None, seminorm=False)


class ODEBlock(nn.Module):
    """Solves the dynamics over ``ts`` and returns the state at the last time.

    The adjoint is used only when gradients are needed; evaluation and generation solve
    without it. Each solve's SolveStats is kept (the last few) for NFE logging. In training
    with RNODE coefficients, ``penalties`` holds the last solve's integrated K and J.
    ``fallback`` (set by the task, see --node-on-budget fixed-step) replaces ``solver``
    while it is not None.
    """

    def __init__(self, dynamics: nn.Module, solver: SolverConfig,
                 reg: Regularisation = Regularisation()):
        super().__init__()
        self.dynamics = dynamics
        self.solver = solver
        self.reg = reg
        self.fallback: Optional[SolverConfig] = None
        self.register_buffer("ts", torch.tensor(solver.ts, dtype=torch.float64), persistent=False)
        self.solves: deque = deque(maxlen=64)
        self.penalties: Dict[str, Tensor] = {}

    def _times(self, like: Tensor) -> Tensor:
        ts = self.ts
        b = self.reg.steer_b
        if self.training and b > 0:
            ts = ts.clone()
            ts[-1] += torch.empty((), dtype=ts.dtype, device=ts.device).uniform_(-b, b)
        return ts.to(like.dtype)

    def forward(self, h0: Tensor, **inputs) -> Tensor:
        s = self.fallback or self.solver
        stats = SolveStats()
        self.solves.append(stats)
        kwargs = dict(rtol=s.rtol, atol=s.atol, method=s.method, options=s.options(),
                      max_nfe=s.max_nfe, stats=stats)
        ts = self._times(h0)
        func, y0 = self.dynamics, h0
        penalised = self.training and self.reg.integrates_penalties and torch.is_grad_enabled()
        if penalised:
            jacobian = self.reg.jacobian > 0
            func = PenalisedDynamics(self.dynamics, jacobian)
            y0 = (h0, h0.new_zeros(1), h0.new_zeros(1))
            if jacobian:
                inputs = dict(inputs, probe=torch.randn_like(h0))
        if s.backprop == "adjoint" and torch.is_grad_enabled():
            out = odeint_adjoint_ext(func, y0, ts, inputs=inputs, adjoint_seminorm=s.seminorm, **kwargs)
        else:
            out = odeint_ext(func, y0, ts, inputs=inputs, **kwargs)
        if not penalised:
            self.penalties = {}
            return out[-1]
        h, kinetic, jac = (x[-1] for x in out)
        self.penalties = {"kinetic": kinetic[0], "jacobian": jac[0]}
        return h
