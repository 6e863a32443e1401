"""The solver's embedded error estimate as a differentiable regulariser.

An adaptive Runge-Kutta step computes two solutions from the same stages; their difference,
scaled by the tolerances, is the error ratio the step-size controller compares with 1
(torchdiffeq: ``norm(error / (atol + rtol * max(|y0|, |y1|)))``). Dynamics whose ratios are small
let the controller take long steps, so a penalty on them lowers the evaluations of later solves.

- "global" (Pal, Ma, Shah, Rackauckas, ICML 2021, "ERNODE"): the sum of the ratios of every
  accepted step. Direct backprop only: read from the solver's own norm as it runs, so it costs
  no evaluation, but it needs the solve's graph.
- "local" (Pal, Edelman, Rackauckas, ICML 2023): one accepted step drawn uniformly (reservoir
  sampling, seeded from torch's default generator), taken again after the solve with gradient:
  one step's stages, with any backprop (under the adjoint it is the only graph).

The re-taken step's ratio is the controller's for that step: the same tableau, norm, tolerances
and first stage value. Its gradient treats the step's start, time and size as given (as the
controller's own ratio does for the time and size); when the drawn step is the first one, its
start is the caller's ``y0``, with its gradient.
"""

from __future__ import annotations

import random
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .methods import ERROR_ESTIMATE_METHODS
from .norms import mixed_norm, rms_norm

ERROR_ESTIMATES = ("global", "local")


def check_error_estimate(kind: Optional[str], method: str, adjoint: bool = False) -> None:
    """ValueError when ``kind`` cannot be given for this method and backprop."""
    if kind is None:
        return
    if kind not in ERROR_ESTIMATES:
        raise ValueError(f"error_estimate must be None, 'global' or 'local', got {kind!r}")
    if method not in ERROR_ESTIMATE_METHODS:
        raise ValueError(f"error_estimate needs a method with an embedded error estimate "
                         f"({', '.join(ERROR_ESTIMATE_METHODS)}); method {method!r} has none")
    if kind == "global" and adjoint:
        raise ValueError("error_estimate='global' needs direct backprop (odeint_ext): the adjoint's "
                         "forward solve runs without a graph, so its steps' error ratios carry no "
                         "gradient; use error_estimate='local' (one step taken again with gradient)")


def _torchdiffeq_tableau(method: str):
    """(alpha, beta, c_sol, c_error) of torchdiffeq's solver for ``method``.

    Workaround: torchdiffeq 0.2.5 keeps its Butcher tableaus on its private solver classes
    (``torchdiffeq._impl.odeint.SOLVERS[method].tableau``); tests/test_error_estimate.py fails
    if they move, or if its default norms stop agreeing with :func:`default_norm`."""
    from torchdiffeq._impl.odeint import SOLVERS
    tableau = SOLVERS[method].tableau
    return tableau.alpha, tableau.beta, tableau.c_sol, tableau.c_error


def default_norm(is_tuple: bool) -> Callable:
    """The norm torchdiffeq's controller uses when options give none, in value; its gradient
    is finite where the error is zero (norms.py), which torchdiffeq's is not."""
    return mixed_norm if is_tuple else rms_norm


def _parts(x) -> List[Tensor]:
    return list(x) if isinstance(x, tuple) else [x]


def _detach(x):
    return tuple(p.detach() for p in x) if isinstance(x, tuple) else x.detach()


def _part_tolerances(tol, parts: List[Tensor], is_tuple: bool, dtype: torch.dtype) -> List[Tensor]:
    """A tolerance per part of the state, with the values torchdiffeq's controller uses (a tuple
    state's per-part tolerances become tensors of the default dtype before float64)."""
    device = parts[0].device
    if is_tuple:
        try:
            per_part = tuple(tol)
        except TypeError:
            per_part = None
        if per_part is not None:
            return [torch.as_tensor(p).to(device=device, dtype=dtype).expand(x.numel()).reshape(x.shape)
                    for p, x in zip(per_part, parts)]
    return [torch.as_tensor(tol, dtype=dtype, device=device)] * len(parts)


def _draws() -> random.Random:
    """The reservoir's random numbers, seeded from torch's default generator: torch.manual_seed
    fixes which step "local" draws (one draw from torch's generator per solve)."""
    return random.Random(int(torch.randint(0, 2 ** 62, ()).item()))


class ErrorEstimate:
    """Watches one solve (func's step callbacks and, for "global", the error norm) and gives its
    error estimate afterwards, as :attr:`SolveStats.local_error <odeint_ext.SolveStats>`."""

    def __init__(self, kind: str, method: str, y0, t: Tensor, rtol, atol, options: Optional[dict]):
        self.kind, self.method, self.y0 = kind, method, y0
        self.is_tuple = isinstance(y0, tuple)
        self.reversed = len(t) > 1 and bool(t[0] > t[1])  # torchdiffeq then steps in -t
        self.rtol, self.atol = rtol, atol
        norm = (options or {}).get("norm")
        self.norm = norm if norm is not None else default_norm(self.is_tuple)
        self.accepted = 0
        self.total: Optional[Tensor] = None  # global: sum of the accepted steps' ratios
        self.last_ratio = None  # global: the norm's latest answer
        # local: the f0 each trial step starts from, and the drawn step
        self.trials, self.accepted_last = 0, False
        self.first_f = self.last_f = self.f0 = None
        self.drawn: Optional[Tuple[Any, ...]] = None
        self.rng = _draws() if kind == "local" else None

    def options(self, options: Optional[dict]) -> Optional[dict]:
        """``options`` with the error norm watched ("global"): the caller's norm or torchdiffeq's."""
        if self.kind != "global":
            return options
        options, norm = dict(options or {}), self.norm

        def watched(x):
            self.last_ratio = norm(x)
            return self.last_ratio

        options["norm"] = watched
        return options

    def attach(self, dyn) -> None:
        """Put the watching callbacks on ``dyn`` (what torchdiffeq is given), around func's own."""
        self._wrap(dyn, "callback_accept_step", self._accepted)
        if self.kind == "local":
            self._wrap(dyn, "callback_step", self._stepping)
            dyn.observer = self._evaluated

    @staticmethod
    def _wrap(dyn, name: str, own: Callable) -> None:
        users = getattr(dyn, name, None)

        def callback(t0, y0, dt):
            own(t0, y0, dt)
            if users is not None:
                users(t0, y0, dt)

        object.__setattr__(dyn, name, callback)

    def _evaluated(self, f) -> None:
        if self.first_f is None:
            self.first_f = f
        self.last_f = f

    def _stepping(self, t0, y0, dt) -> None:
        # The f0 a trial step starts from: the solve's first evaluation, then after an accepted
        # step the last evaluation (its last stage, or f at the new point after a jump_t); a
        # rejected step's retry keeps its f0. For adaptive_heun and fehlberg2 that last stage
        # is not f(t0, y0): torchdiffeq carries it over all the same.
        if self.trials == 0:
            self.f0 = self.first_f
        elif self.accepted_last:
            self.f0 = self.last_f
        self.trials += 1
        self.accepted_last = False

    def _accepted(self, t0, y0, dt) -> None:
        self.accepted += 1
        self.accepted_last = True
        if self.kind == "global":
            ratio = torch.as_tensor(self.last_ratio).abs()
            self.total = ratio if self.total is None else self.total + ratio
        elif self.rng.randrange(self.accepted) == 0:  # the n-th accepted step replaces with 1/n
            self.drawn = (t0.detach(), _detach(y0), dt.detach(), _detach(self.f0), self.accepted == 1)

    def value(self, call: Callable) -> Tensor:
        """The estimate, in the state's dtype (0 when no step was accepted). ``call(t, y)``
        evaluates the dynamics for the re-taken step ("local")."""
        ref = _parts(self.y0)[0]
        if self.kind == "global":
            found = self.total
        else:
            found = None if self.drawn is None else self._retake(call, *self.drawn)
        # func's callbacks (closures over self) live as long as the adjoint's graph: let go
        self.total = self.last_ratio = self.first_f = self.last_f = self.f0 = self.drawn = None
        if found is None:
            return torch.zeros((), dtype=ref.dtype, device=ref.device)
        return found.to(ref.dtype)

    def _retake(self, call: Callable, t0: Tensor, y0, dt: Tensor, f0, first: bool) -> Tensor:
        """The drawn step taken again with gradient, as torchdiffeq's controller took it (in its
        frame: time increasing, a tuple state as parts), and its error ratio."""
        if first:
            y0 = self.y0  # the caller's initial state: its gradient is natural
        y0s = _parts(y0)
        ref = y0s[0]
        tdtype = ref.abs().dtype
        alpha, beta, c_sol, c_error = (
            [b.to(device=ref.device, dtype=ref.dtype) for b in x] if isinstance(x, list)
            else x.to(device=ref.device, dtype=ref.dtype)
            for x in _torchdiffeq_tableau(self.method))
        sign = -1.0 if self.reversed else 1.0
        t0 = -t0 if self.reversed else t0
        t1, t0, dt = (t0 + dt).to(tdtype), t0.to(tdtype), dt.to(tdtype)

        def f(t, ys):  # the dynamics in the controller's frame
            out = _parts(call(-t if self.reversed else t, tuple(ys) if self.is_tuple else ys[0]))
            return [sign * o for o in out] if self.reversed else out

        k0 = [sign * p for p in _parts(f0)] if self.reversed else _parts(f0)
        if torch.is_grad_enabled():  # the solver's value of f0, with the gradient of f(t0, y0)
            k0 = [v + (x - x.detach()) for v, x in zip(k0, f(t0, y0s))]
        ks = [[k] for k in k0]  # per part, the stages so far
        ys = y0s
        for a, b in zip(alpha, beta):
            ti = torch.nextafter(t1, t1 - 1) if a == 1 else t0 + a * dt
            ys = [y + torch.sum(torch.stack(k, -1) * (b * dt), dim=-1) for y, k in zip(y0s, ks)]
            for k, fi in zip(ks, f(ti, ys)):
                k.append(fi)
        stages = [torch.stack(k, -1) for k in ks]
        if not (c_sol[-1] == 0 and (c_sol[:-1] == beta[-1]).all()):  # no first-same-as-last
            ys = [y + torch.sum(s * (dt * c_sol), dim=-1) for y, s in zip(y0s, stages)]
        errors = [torch.sum(s * (dt * c_error), dim=-1) for s in stages]
        dtype = torch.promote_types(torch.float64, tdtype)
        rtols = _part_tolerances(self.rtol, y0s, self.is_tuple, dtype)
        atols = _part_tolerances(self.atol, y0s, self.is_tuple, dtype)
        scaled = [e / (at + rt * torch.max(y.abs(), y1.abs()))
                  for e, at, rt, y, y1 in zip(errors, atols, rtols, y0s, ys)]
        return torch.as_tensor(self.norm(tuple(scaled) if self.is_tuple else scaled[0])).abs()
