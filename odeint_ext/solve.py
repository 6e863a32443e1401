"""odeint with extra inputs to the dynamics, gradients to all of them, NFE accounting and budgets.

Built on torchdiffeq's public ``odeint`` / ``odeint_adjoint``. The extra inputs reach the
dynamics by closure (a small module that binds them); under the adjoint, every floating
tensor among them that requires grad is handed to torchdiffeq as an ``adjoint_param``, which
is how torchdiffeq delivers a vector-Jacobian product to tensors it does not own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torchdiffeq import odeint as _odeint
from torchdiffeq import odeint_adjoint as _odeint_adjoint

from .errors import MaxNFEExceeded, NonFiniteStateError, ODESolveError
from .methods import is_adaptive

State = Union[Tensor, Tuple[Tensor, ...]]


@dataclass
class SolveStats:
    """Function evaluations of one solve. ``nfe_backward`` grows while the adjoint backward runs."""

    nfe_forward: int = 0
    nfe_backward: int = 0
    # Last time at which the dynamics were evaluated (a tensor: reading it needs no sync
    # until someone asks for the number).
    t_last: Optional[Tensor] = field(default=None, repr=False)


_last = threading.local()


def last_stats() -> Optional[SolveStats]:
    """The stats of the most recent solve started in this thread."""
    return getattr(_last, "stats", None)


class _BoundDynamics(nn.Module):
    """func with its extra inputs bound, counting evaluations and enforcing the budget."""

    def __init__(self, func: Callable, inputs: Dict[str, Any], stats: SolveStats, max_nfe: Optional[int]):
        super().__init__()
        self.func = func
        self.inputs = inputs
        self.stats = stats
        self.max_nfe = max_nfe
        self.phase = "forward"
        self.pass_nfe = 0  # evaluations of the current backward pass

    def forward(self, t: Tensor, y: State):
        stats = self.stats
        if self.phase == "forward":
            stats.nfe_forward += 1
            nfe = stats.nfe_forward
        else:
            stats.nfe_backward += 1
            self.pass_nfe += 1
            nfe = self.pass_nfe
        stats.t_last = t
        if self.max_nfe is not None and nfe > self.max_nfe:
            raise MaxNFEExceeded(nfe, float(t.detach()), self.max_nfe, self.phase)
        return self.func(t, y, **self.inputs)


class _BackwardPassStart(torch.autograd.Function):
    """Identity on the solution; its backward runs just before the adjoint's, so each
    backward pass (retain_graph allows several) gets its own evaluation budget."""

    @staticmethod
    def forward(ctx, dyn, *ys):
        ctx.dyn = dyn
        return tuple(y.view_as(y) for y in ys)

    @staticmethod
    def backward(ctx, *grads):
        ctx.dyn.pass_nfe = 0
        return (None, *grads)


def _grad_tensors(obj: Any, found: List[Tensor]) -> List[Tensor]:
    """Floating tensors that require grad, also inside lists, tuples, dicts and modules."""
    if isinstance(obj, Tensor):
        if obj.requires_grad and obj.is_floating_point():
            found.append(obj)
    elif isinstance(obj, nn.Module):
        found.extend(p for p in obj.parameters() if p.requires_grad)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _grad_tensors(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _grad_tensors(item, found)
    return found


def _unique(tensors) -> Tuple[Tensor, ...]:
    seen, out = set(), []
    for x in tensors:
        if id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return tuple(out)


def _as_time(t, y0: State) -> Tensor:
    ref = y0[0] if isinstance(y0, tuple) else y0
    if not isinstance(t, Tensor):
        t = torch.tensor(t, dtype=ref.dtype if ref.is_floating_point() else torch.float32)
    return t.to(ref.device)


def _check_finite(solution: State) -> State:
    parts = solution if isinstance(solution, tuple) else (solution,)
    # One host sync per solve, not per evaluation.
    if not all(bool(torch.isfinite(p).all()) for p in parts):
        raise NonFiniteStateError("ODE solution holds NaN or Inf: the dynamics diverged")
    return solution


def _validate(method: str, rtol: float, atol: float, max_nfe: Optional[int]) -> None:
    is_adaptive(method)  # raises on an unknown name
    if not rtol > 0 or not atol > 0:
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    if max_nfe is not None and max_nfe < 1:
        raise ValueError(f"max_nfe must be >= 1 or None, got {max_nfe}")


def _solve(solver: Callable, dyn: _BoundDynamics, **kwargs) -> State:
    try:
        solution = solver(dyn, **kwargs)
    except AssertionError as e:  # torchdiffeq's guards ("underflow in dt", "max_num_steps exceeded", ...)
        raise ODESolveError(f"torchdiffeq stopped the solve: {e}") from e
    return _check_finite(solution)


def odeint_ext(
    func: Callable,
    y0: State,
    t,
    *,
    inputs: Optional[Dict[str, Any]] = None,
    rtol: float,
    atol: float,
    method: str = "dopri5",
    options: Optional[dict] = None,
    max_nfe: Optional[int] = None,
    stats: Optional[SolveStats] = None,
) -> State:
    """Solve dy/dt = func(t, y, **inputs) and backpropagate through the solver's operations.

    Returns the states at every time in ``t``, as torchdiffeq does. NFE goes to ``stats``
    (or a new SolveStats, see :func:`last_stats`); no evaluation past ``max_nfe`` runs.
    """
    _validate(method, rtol, atol, max_nfe)
    stats = SolveStats() if stats is None else stats
    _last.stats = stats
    dyn = _BoundDynamics(func, dict(inputs or {}), stats, max_nfe)
    return _solve(_odeint, dyn, y0=y0, t=_as_time(t, y0), rtol=rtol, atol=atol,
                  method=method, options=options)


def odeint_adjoint_ext(
    func: Callable,
    y0: State,
    t,
    *,
    inputs: Optional[Dict[str, Any]] = None,
    rtol: float,
    atol: float,
    method: str = "dopri5",
    options: Optional[dict] = None,
    adjoint_rtol: Optional[float] = None,
    adjoint_atol: Optional[float] = None,
    adjoint_method: Optional[str] = None,
    adjoint_options: Optional[dict] = None,
    adjoint_seminorm: bool = False,
    max_nfe: Optional[int] = None,
    stats: Optional[SolveStats] = None,
) -> State:
    """Like :func:`odeint_ext`, with the adjoint backward: memory flat in the number of steps.

    Gradients reach ``y0``, ``func``'s parameters (when it is an nn.Module) and every floating
    tensor in ``inputs`` that requires grad, leaf or not. ``adjoint_seminorm`` drops the
    parameter-gradient channels from the backward's error norm (Kidger et al. 2021).
    ``max_nfe`` bounds the forward and the backward solve, each on its own.
    """
    _validate(method, rtol, atol, max_nfe)
    adjoint_method = method if adjoint_method is None else adjoint_method
    if adjoint_seminorm:
        if not is_adaptive(adjoint_method):
            raise ValueError(f"adjoint_seminorm needs an adaptive adjoint_method, got {adjoint_method!r}")
        # torchdiffeq inherits the forward options only when adjoint_options is None;
        # once we pass our own, carry the forward ones (max_num_steps, min_step, ...) over.
        base = adjoint_options if adjoint_options is not None else (options or {})
        adjoint_options = {k: v for k, v in base.items() if k != "norm"}
        adjoint_options["norm"] = "seminorm"

    stats = SolveStats() if stats is None else stats
    _last.stats = stats
    inputs = dict(inputs or {})
    dyn = _BoundDynamics(func, inputs, stats, max_nfe)
    params = list(func.parameters()) if isinstance(func, nn.Module) else []
    adjoint_params = _unique(p for p in params + _grad_tensors(inputs, []) if p.requires_grad)

    solution = _solve(
        _odeint_adjoint, dyn, y0=y0, t=_as_time(t, y0), rtol=rtol, atol=atol, method=method,
        options=options, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
        adjoint_method=adjoint_method, adjoint_options=adjoint_options,
        adjoint_params=adjoint_params,
    )
    # Every later evaluation of this module comes from the adjoint backward.
    dyn.phase = "backward"
    if isinstance(solution, tuple):
        return _BackwardPassStart.apply(dyn, *solution)
    return _BackwardPassStart.apply(dyn, solution)[0]
