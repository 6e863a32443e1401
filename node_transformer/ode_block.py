"""An ODE block: h(t1) = h(t0) + integral of f(t, h) dt, solved with odeint_ext.

The block holds its solver settings (odeint_ext.SolverSettings), the NFE record, the
RNODE/STEER options and --node-train-steps' draw; the dynamics f live in dynamics.py, the
penalties' rates in regularisers.py. What a training loop needs of the blocks of a model is offered here:
:func:`ode_blocks`, :meth:`ODEBlock.reset_record` / :meth:`ODEBlock.nfe_record`,
:func:`fixed_step_fallback`, :func:`record_backward_overruns`, :func:`total_penalties`,
:func:`penalties_per_position`.
"""

from __future__ import annotations

import random
from collections import deque
from contextlib import contextmanager
from dataclasses import replace
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from odeint_ext import ERROR_ESTIMATE_METHODS, MaxNFEExceeded, SolverSettings, SolveStats
from odeint_ext.norms import rms_norm, safe_sqrt

from .incremental import staged
from .regularisers import PenalisedDynamics, Regularisation


class _SolverView(nn.Module):
    """f as the solver sees it: a float32 state whatever the model's dtype, f evaluated in the
    model's dtype, and padded positions held fixed (dh/dt = 0 where ``keep`` is 0).

    The controller then stays exact in fp16/bf16 (torchdiffeq computes its error norm and
    first-step guess in the state's dtype: squares of fp16 values overflow), and a sentence's
    trajectory does not depend on how many pad columns its batch has. Made per solve; its
    parameters are the dynamics' own.
    """

    def __init__(self, dynamics: nn.Module, dtype: torch.dtype, stats: SolveStats,
                 max_nfe: Optional[int], overruns: list):
        super().__init__()
        self.dynamics = dynamics
        self.dtype = dtype
        self.stats = stats
        self.max_nfe = max_nfe
        self.overruns = overruns

    def forward(self, t: Tensor, h: Tensor, *, keep: Optional[Tensor] = None, **inputs) -> Tensor:
        if self.max_nfe is not None and self._over_budget(t):
            # Backward over budget: f = 0 ends the adjoint solve in a few cheap steps. Raising
            # here would leave distributed workers' gradient all-reduces out of step; the
            # task reads ``overruns`` after the backward and drops the batch on every worker.
            return h * 0
        f = self.dynamics(t, h.to(self.dtype), **inputs).to(h.dtype)
        return f if keep is None else f * keep

    def _over_budget(self, t: Tensor) -> bool:
        stats, limit = self.stats, self.max_nfe
        if stats.nfe_backward == 0:
            if stats.nfe_forward > limit:
                raise MaxNFEExceeded(stats.nfe_forward, float(t.detach()), limit, "forward")
            return False
        if stats.nfe_backward <= limit:
            return False
        error = MaxNFEExceeded(stats.nfe_backward, float(t.detach()), limit, "backward")
        if self.overruns is None:
            raise error
        if stats.nfe_backward == limit + 1:
            self.overruns.append(error)
        return True


class _RealPositionsNorm:
    """The solver's error norm (RMS, as torchdiffeq's default) over real positions only:
    pad columns must not change a sentence's steps. A tuple state (RNODE's extra channels)
    takes the largest of its parts' norms, as torchdiffeq does for tuples; those channels
    are means over the real positions already (regularisers._per_position). Its square roots
    have gradient 0 where a part's error is exactly 0 (odeint_ext.norms): the error penalty
    differentiates through this norm, and a plain sqrt would make every gradient NaN there."""

    def __init__(self, keep: Tensor):
        self.keep = keep  # T x B x 1, 1 at real positions
        self.count = keep.sum()

    def _masked_rms(self, x: Tensor) -> Tensor:
        return safe_sqrt((x.pow(2) * self.keep).sum() / (self.count * x.shape[-1]))

    def __call__(self, x):
        if isinstance(x, tuple):
            return torch.stack([self._masked_rms(x[0])] + [rms_norm(p) for p in x[1:]]).max()
        return self._masked_rms(x)


def ode_blocks(module: Optional[nn.Module]) -> List["ODEBlock"]:
    """The ODE blocks (torchdiffeq solves) inside ``module`` (none for None)."""
    return [m for m in module.modules() if isinstance(m, ODEBlock)] if module is not None else []


def depth_blocks(module: Optional[nn.Module]) -> List["DepthBlock"]:
    """Every continuous-depth block inside ``module``: ODE blocks and the learned Runge-Kutta
    blocks of rk_blocks.py (what NFE logging counts)."""
    return [m for m in module.modules() if isinstance(m, DepthBlock)] if module is not None else []


@contextmanager
def fixed_step_fallback(model: nn.Module, steps: int):
    """Inside this context every ODE block of ``model`` solves with rk4 on ``steps`` steps,
    unbounded (--node-on-budget fixed-step): a batch over budget can be solved again."""
    blocks = ode_blocks(model)
    for b in blocks:
        b.fallback = b.solver.fixed_step(steps)
    try:
        yield
    finally:
        for b in blocks:
            b.fallback = None


def total_penalties(model: nn.Module) -> Dict[str, Tensor]:
    """The penalties of the last forward as the loss takes them: each summed over the real
    positions of every block that integrated it (additive over sentences)."""
    terms: Dict[str, list] = {}
    for b in ode_blocks(model):
        for name, value in b.penalties.items():
            terms.setdefault(name, []).append(value * b.positions)
    return {name: sum(values) for name, values in terms.items()}


def clear_penalties(model: nn.Module) -> None:
    """Forget every block's penalties before a forward: a block that this forward does not
    run (LayerDrop) must not add those of an earlier batch, whose graph is gone."""
    for b in ode_blocks(model):
        b.penalties, b.positions = {}, None


def penalties_per_position(module: Optional[nn.Module]) -> Dict[str, float]:
    """The penalties of the last forward as the logs show them: each block's mean over its
    real positions (the error estimate: its ratio), summed over the blocks of ``module``
    (a model or one side; None: none), comparable whatever the batch's size."""
    terms: Dict[str, float] = {}
    for b in ode_blocks(module):
        for name, value in b.penalties.items():
            terms[name] = terms.get(name, 0.0) + float(value.detach())
    return terms


@contextmanager
def record_backward_overruns(model: nn.Module):
    """Backward solves over budget inside this context finish (with f = 0) instead of
    raising, and are listed in what it yields: a distributed training step must finish its
    backward, whose gradient all-reduces the other workers wait for, before all of them
    drop the batch together. The gradients of such a backward are garbage: discard them."""
    found: list = []
    blocks = ode_blocks(model)
    for b in blocks:
        b.overruns = found
    try:
        yield found
    finally:
        for b in blocks:
            b.overruns = None


class DepthBlock(nn.Module):
    """What every block in the place of a layer keeps for the training loop: a SolveStats per
    forward (the last few in ``solves``), summed by :meth:`nfe_record` since
    :meth:`reset_record`, and the penalties of its last forward."""

    def __init__(self):
        super().__init__()
        self.solves: deque = deque(maxlen=64)
        self.penalties: Dict[str, Tensor] = {}  # per real position of the state
        self.positions: Optional[Tensor] = None  # how many real positions ``penalties`` are of

    def reset_record(self) -> None:
        """Forget the solves so far, and their penalties: :meth:`nfe_record` counts from here."""
        self.solves.clear()
        self.penalties, self.positions = {}, None

    def nfe_record(self) -> SolveStats:
        """Function evaluations of the solves since :meth:`reset_record`, forward and backward
        (the backward's grow while an adjoint backward runs)."""
        return SolveStats(nfe_forward=sum(s.nfe_forward for s in self.solves),
                          nfe_backward=sum(s.nfe_backward for s in self.solves))

    def staged(self) -> bool:
        """Whether its evaluations come in a data-independent order (cached decoding)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A few words for logs: the method and its steps."""
        raise NotImplementedError


class ODEBlock(DepthBlock):
    """Solves the dynamics over ``ts`` and returns the state at the last time.

    The adjoint is used only when gradients are needed; evaluation and generation solve
    without it. Each solve's SolveStats is kept (the last few in ``solves``): their sum since
    :meth:`reset_record` is :meth:`nfe_record`. In training with RNODE coefficients,
    ``penalties`` holds the last solve's integrated K and J per real position (and with
    --node-error-penalty its error estimate, "error") and ``positions`` their number
    (:func:`total_penalties` sums them over positions and blocks). ``fallback`` (set by
    :func:`fixed_step_fallback`) replaces ``solver`` while it is not None.
    """

    def __init__(self, dynamics: nn.Module, solver: SolverSettings,
                 reg: Regularisation = Regularisation()):
        super().__init__()
        self.dynamics = dynamics
        self.solver = solver
        self.reg = reg
        self.fallback: Optional[SolverSettings] = None
        self.register_buffer("ts", torch.tensor(solver.ts, dtype=torch.float64), persistent=False)
        # None: a backward over budget raises MaxNFEExceeded. A list (see
        # record_backward_overruns): the backward finishes and the overrun is put there.
        self.overruns: Optional[list] = None
        self.num_updates = 0  # fairseq's set_num_updates: the update the next forward is in
        self._train_solvers: Dict[tuple, SolverSettings] = {}  # (solver, steps) -> its grid

    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates

    def _training_solver(self, s: SolverSettings) -> SolverSettings:
        """--node-train-steps: this update's step count, the same on every worker (a function
        of the update number alone)."""
        choices = self.reg.train_steps
        steps = choices[random.Random(self.num_updates).randrange(len(choices))]
        key = (s, steps)  # keyed on the solver too: it may be replaced after the first draw
        if key not in self._train_solvers:
            self._train_solvers[key] = replace(s, steps=steps)
        return self._train_solvers[key]

    def staged(self) -> bool:
        return staged(self.fallback or self.solver)

    def describe(self) -> str:
        s = self.fallback or self.solver
        return s.method + (f", {s.steps} step{'s' * (s.steps > 1)}" if s.steps else "")

    def _times(self, like: Tensor) -> Tensor:
        ts = self.ts
        b = self.reg.steer_b
        if self.training and b > 0:
            ts = ts.clone()
            ts[-1] += torch.empty((), dtype=ts.dtype, device=ts.device).uniform_(-b, b)
        return ts.to(like.dtype)

    def solver_problem(self, h0: Tensor, padding_mask: Optional[Tensor] = None,
                       stats: Optional[SolveStats] = None, **inputs):
        """What a solve of this block hands the solver: (func, y0, inputs, norm, keep), for
        forward and for tools that watch the solver's steps (experiments.analysis.error_drivers).
        ``padding_mask``: Batch x Time, True at pads (fairseq's convention); those positions
        keep their initial state (``keep`` 0 there) and are left out of the error norm."""
        s = self.fallback or self.solver
        norm = keep = None
        dtype = h0.dtype
        h0 = h0.float() if dtype in (torch.float16, torch.bfloat16) else h0
        if padding_mask is not None and bool(padding_mask.any()):
            keep = (~padding_mask).t().unsqueeze(-1).to(h0.dtype)
            inputs = dict(inputs, keep=keep)
            if s.takes_norm:
                norm = _RealPositionsNorm(keep)
        func = _SolverView(self.dynamics, dtype, stats or SolveStats(), s.max_nfe, self.overruns)
        return func, h0, inputs, norm, keep

    def forward(self, h0: Tensor, padding_mask: Optional[Tensor] = None, **inputs) -> Tensor:
        """``padding_mask``: see :meth:`solver_problem`."""
        s = self.fallback or self.solver
        if self.training and self.reg.train_steps and self.fallback is None:
            s = self._training_solver(s)
        stats = SolveStats()
        self.solves.append(stats)
        dtype = h0.dtype
        func, h0, inputs, norm, _ = self.solver_problem(h0, padding_mask, stats, **inputs)
        ts = self._times(h0)
        y0 = h0
        training = self.training and torch.is_grad_enabled()
        channels = training and self.reg.integrates_penalties
        if channels:
            jacobian = self.reg.jacobian > 0
            func = PenalisedDynamics(func, jacobian)
            y0 = (h0, h0.new_zeros(1), h0.new_zeros(1))
            if jacobian:
                inputs = dict(inputs, probe=torch.randn_like(h0))
        # The fixed-step fallback (rk4) has no error estimate: its solves go unpenalised.
        estimate = (self.reg.error_estimate if training and self.reg.error > 0
                    and s.method in ERROR_ESTIMATE_METHODS else None)
        # The budget is _SolverView's: a backward over it finishes when overruns are recorded.
        out = s.solve(func, y0, ts, inputs=inputs, stats=stats, norm=norm, enforce_budget=False,
                      error_estimate=estimate)
        self.penalties = {}
        if channels:
            out, kinetic, jac = (x[-1] for x in out)
            self.penalties.update(kinetic=kinetic[0], jacobian=jac[0])
        else:
            out = out[-1]
        if estimate is not None:
            self.penalties["error"] = stats.local_error
        if self.penalties:
            keep = inputs.get("keep")
            self.positions = keep.sum() if keep is not None else h0.new_tensor(float(h0[..., 0].numel()))
        return out.to(dtype)
