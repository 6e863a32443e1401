"""odeint with extra inputs to the dynamics, gradients to all of them, NFE accounting and budgets.

Built on torchdiffeq's public ``odeint`` / ``odeint_adjoint``, and a superset of them: every
argument they take (``event_fn``, ``adjoint_params``, the default tolerances, ``method=None``)
means the same here, and ``func``'s callbacks (``callback_step`` ... and the ``_adjoint``
versions) are called as torchdiffeq calls them. The extra inputs reach the dynamics by closure
(a small module that binds them). Under the adjoint, every floating tensor among them that
requires grad is handed to torchdiffeq as an ``adjoint_param``, which is how torchdiffeq delivers
a vector-Jacobian product to tensors it does not own.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torchdiffeq
from torch import Tensor, nn
from torchdiffeq import odeint as _odeint
from torchdiffeq import odeint_adjoint as _odeint_adjoint
from torchdiffeq import odeint_event as _odeint_event

from .error_estimate import ErrorEstimate, check_error_estimate
from .errors import MaxNFEExceeded, NonFiniteStateError, ODESolveError
from .methods import is_adaptive

State = Union[Tensor, Tuple[Tensor, ...]]

# torchdiffeq 0.2.5 looks these up on ``func`` (misc._all_callback_names and their _adjoint twins).
CALLBACK_NAMES = tuple(
    name + suffix
    for suffix in ("", "_adjoint")
    for name in ("callback_step", "callback_accept_step", "callback_reject_step")
)
_AUTOCAST_DEVICES = ("cpu", "cuda")
_TORCHDIFFEQ_DIR = os.path.dirname(os.path.abspath(torchdiffeq.__file__)) + os.sep


def _raised_by_torchdiffeq(e: BaseException) -> bool:
    """Whether the innermost frame of e's traceback is torchdiffeq's (its guards), not func's."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_TORCHDIFFEQ_DIR)


@dataclass
class SolveStats:
    """Function evaluations of one solve. ``nfe_backward`` grows while the adjoint backward runs.

    ``local_error``: the solve's error estimate when one was asked for (``error_estimate=``), a
    scalar tensor with a gradient; ``nfe_error``: the evaluations that estimate made (the
    "local" one re-takes a step after the solve; those are in neither ``nfe_forward`` nor
    ``max_nfe``).
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    nfe_error: int = 0
    local_error: Optional[Tensor] = None
    # Last time at which the dynamics were evaluated (a tensor: reading it needs no sync
    # until someone asks for the number).
    t_last: Optional[Tensor] = field(default=None, repr=False)


_last = threading.local()


def last_stats() -> Optional[SolveStats]:
    """The stats of the most recent solve started in this thread."""
    return getattr(_last, "stats", None)


def _autocast_state() -> Tuple[Tuple[str, bool, torch.dtype], ...]:
    return tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES)


@contextlib.contextmanager
def _autocast_as(state):
    """Re-enter a recorded autocast state (on, with its dtype, or off), per device type."""
    with contextlib.ExitStack() as stack:
        for device, enabled, dtype in state:
            now = torch.is_autocast_enabled(device)
            if now != enabled or (enabled and torch.get_autocast_dtype(device) != dtype):
                stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
        yield


class _BoundDynamics(nn.Module):
    """func with its extra inputs bound, counting evaluations and enforcing the budget.

    The adjoint backward evaluates func long after the solve, usually outside the autocast
    region the solve ran in: those evaluations re-enter the autocast state of the solve, so
    that the backward differentiates the dynamics the forward integrated. func's callbacks are
    exposed as attributes (torchdiffeq looks them up on the function it is given), as func's
    own bound methods.
    """

    def __init__(self, func: Callable, inputs: Dict[str, Any], stats: SolveStats, max_nfe: Optional[int]):
        super().__init__()
        self.func = func
        self.inputs = inputs
        self.stats = stats
        self.max_nfe = max_nfe
        self.phase = "forward"  # "backward" during the adjoint's, "error" re-taking a step
        self.pass_nfe = 0  # evaluations of the current backward pass
        self.observer: Optional[Callable] = None  # sees each forward evaluation's value
        self.autocast = _autocast_state()
        for name in CALLBACK_NAMES:
            callback = getattr(func, name, None)
            if callback is not None:
                object.__setattr__(self, name, callback)

    def forward(self, t: Tensor, y: State):
        stats = self.stats
        if self.phase == "error":  # outside the solve and its budget: a fixed number of stages
            stats.nfe_error += 1
            return self.func(t, y, **self.inputs)
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
        if self.phase == "forward":
            f = self.func(t, y, **self.inputs)
            if self.observer is not None:
                self.observer(f)
            return f
        with _autocast_as(self.autocast):
            return self.func(t, y, **self.inputs)


# What torchdiffeq's adjoint node (the solution's ``grad_fn``) carries for its backward; the
# node of odeint_adjoint_ext's solution shows the same attributes, and a change made to them
# there (torchdiffeq's own tests swap ``adjoint_options["norm"]``) reaches the backward solve.
ADJOINT_NODE_ATTRIBUTES = ("shapes", "func", "adjoint_rtol", "adjoint_atol", "adjoint_method",
                           "adjoint_options", "t_requires_grad", "event_mode")


def _torchdiffeq_adjoint_node(outs):
    """torchdiffeq's adjoint node under ``outs`` (through the views a tuple state makes)."""
    stack, seen = [o.grad_fn for o in outs if o.grad_fn is not None], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if all(hasattr(node, name) for name in ADJOINT_NODE_ATTRIBUTES):
            return node
        stack.extend(n for n, _ in node.next_functions)
    return None


class _NestedAdjoint(torch.autograd.Function):
    """torchdiffeq's adjoint solve run as a graph of its own, over detached aliases of the inputs.

    Why: torchdiffeq differentiates ``func`` with respect to every adjoint parameter at once.
    Were an input still attached to its history (``k = W @ x`` with ``W`` a parameter of
    ``func``), the derivative with respect to ``W`` would already include the path through
    ``k``, and autograd would add that path a second time when it carries ``dL/dk`` back to
    ``W``. Detached aliases cut that history inside the adjoint; this node's backward hands the
    aliases' gradients to the real tensors, so autograd applies the chain rule exactly once.
    The backward is also where the adjoint solve runs: it starts each pass's evaluation budget
    and turns torchdiffeq's failed ``assert``s into ODESolveError.
    """

    @staticmethod
    def forward(ctx, dyn, run, n_alias, *tensors):
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(x.requires_grad) for x in tensors[:n_alias]]
            leaves += tensors[n_alias:]
            outs = run(leaves)
        dyn.phase = "backward"  # every later evaluation comes from the adjoint backward
        ctx.dyn, ctx.leaves = dyn, leaves
        ctx.inner = _torchdiffeq_adjoint_node(outs)
        if ctx.inner is not None:  # the solution's grad_fn shows torchdiffeq's attributes
            for name in ADJOINT_NODE_ATTRIBUTES:
                setattr(ctx, name, getattr(ctx.inner, name))
        # Saved, not kept as attributes: released with the rest of the graph after a backward
        # without retain_graph, and a second one then fails as any freed graph does.
        ctx.save_for_backward(*outs)
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        outs = ctx.saved_tensors
        ctx.dyn.pass_nfe = 0
        if ctx.inner is not None:  # what was changed on this node, torchdiffeq's backward uses
            for name in ADJOINT_NODE_ATTRIBUTES:
                setattr(ctx.inner, name, getattr(ctx, name))
        pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad and g is not None]
        wanted = [i for i, leaf in enumerate(ctx.leaves)
                  if leaf.requires_grad and ctx.needs_input_grad[3 + i]]
        result: List[Optional[Tensor]] = [None] * len(ctx.leaves)
        if pairs and wanted:
            try:
                found = torch.autograd.grad(
                    [o for o, _ in pairs], [ctx.leaves[i] for i in wanted], [g for _, g in pairs],
                    retain_graph=True, allow_unused=True,
                )
            except AssertionError as e:  # torchdiffeq's guards, now in the backward solve
                if not _raised_by_torchdiffeq(e):
                    raise
                raise ODESolveError(f"torchdiffeq stopped the adjoint backward solve: {e}") from e
            for i, g in zip(wanted, found):
                result[i] = g
        return (None, None, None, *result)


def _grad_tensors(obj: Any, found: List[Tensor], params: Optional[List[Tensor]] = None) -> List[Tensor]:
    """Floating tensors that require grad, also inside lists, tuples and dicts; the parameters of
    modules go to ``params`` (to ``found`` when ``params`` is None)."""
    if isinstance(obj, Tensor):
        if obj.requires_grad and obj.is_floating_point():
            found.append(obj)
    elif isinstance(obj, nn.Module):
        (found if params is None else params).extend(p for p in obj.parameters() if p.requires_grad)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _grad_tensors(item, found, params)
    elif isinstance(obj, dict):
        for item in obj.values():
            _grad_tensors(item, found, params)
    return found


def _swap_tensors(obj: Any, swap: Dict[int, Tensor]) -> Any:
    """``obj`` with the tensors keyed (by id) in ``swap`` replaced; containers without such a
    tensor are returned as they are (the same object)."""
    if isinstance(obj, Tensor):
        return swap.get(id(obj), obj)
    if isinstance(obj, (list, tuple, dict)) and not isinstance(obj, nn.Module):
        items = list(obj.values()) if isinstance(obj, dict) else list(obj)
        new = [_swap_tensors(x, swap) for x in items]
        if all(a is b for a, b in zip(items, new)):
            return obj
        if isinstance(obj, dict):
            out = type(obj)() if type(obj) is not dict else {}
            out.update(zip(obj.keys(), new))
            return out
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*new)
        return type(obj)(new)
    return obj


def _unique(tensors) -> List[Tensor]:
    seen, out = set(), []
    for x in tensors:
        if id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return out


def _history_reaches(x: Tensor, targets: Sequence[Tensor]) -> bool:
    """Whether ``x`` (non-leaf) was computed from one of ``targets``."""
    leaves = {id(t) for t in targets if t.grad_fn is None}
    nodes = {id(t.grad_fn) for t in targets if t.grad_fn is not None}
    stack, seen = [x.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if id(node) in nodes or id(getattr(node, "variable", None)) in leaves:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


def _split(flat: Tensor, shapes) -> Tuple[Tensor, ...]:
    """A tuple state's solution from its flat form (..., sum of the parts' sizes), as views of
    a slice each, the graph torchdiffeq's own tuple solutions have: its tests reach the adjoint
    node through it."""
    lead, parts, start = flat.shape[:-1], [], 0
    for shape in shapes:
        parts.append(flat[..., start:start + shape.numel()].view((*lead, *shape)))
        start += shape.numel()
    return tuple(parts)


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


def _tolerance_values(tol) -> List[float]:
    parts = tol if isinstance(tol, (list, tuple)) else (tol,)
    values: List[float] = []
    for p in parts:
        values.extend(torch.as_tensor(p, dtype=torch.float64).reshape(-1).tolist())
    return values


def _validate(method: Optional[str], rtol, atol, max_nfe: Optional[int]) -> str:
    """Checks the arguments torchdiffeq would take silently; returns the method's name."""
    method = "dopri5" if method is None else method  # torchdiffeq's default
    is_adaptive(method)  # raises on an unknown name
    rtols, atols = _tolerance_values(rtol), _tolerance_values(atol)
    if not all(v >= 0 for v in rtols + atols) or not any(v > 0 for v in rtols + atols):
        raise ValueError(f"rtol and atol must be >= 0 and not both 0, got rtol={rtol}, atol={atol}")
    if max_nfe is not None and max_nfe < 1:
        raise ValueError(f"max_nfe must be >= 1 or None, got {max_nfe}")
    return method


def _solve(solver: Callable, *args, event: bool = False, **kwargs):
    try:
        out = solver(*args, **kwargs)
    except AssertionError as e:  # torchdiffeq's guards ("underflow in dt", "max_num_steps exceeded", ...)
        if not _raised_by_torchdiffeq(e):
            raise  # func's own assert
        raise ODESolveError(f"torchdiffeq stopped the solve: {e}") from e
    _check_finite(out[1] if event else out)
    return out


def _start(stats: Optional[SolveStats]) -> SolveStats:
    stats = SolveStats() if stats is None else stats
    stats.local_error = None  # the estimate of this solve, if it asks for one
    _last.stats = stats
    return stats


def _watch(error_estimate: Optional[str], method: str, dyn: _BoundDynamics, y0: State, t: Tensor,
           rtol, atol, options: Optional[dict]) -> Optional[ErrorEstimate]:
    """What watches the solve for its error estimate, attached to ``dyn`` (None: not asked)."""
    if error_estimate is None:
        return None
    estimate = ErrorEstimate(error_estimate, method, y0, t, rtol, atol, options)
    estimate.attach(dyn)
    return estimate


def _estimate_error(estimate: Optional[ErrorEstimate], func: Callable, inputs: Dict[str, Any],
                    stats: SolveStats) -> None:
    """``stats.local_error`` after the solve; a re-taken step's evaluations see the caller's
    inputs themselves (not the adjoint's aliases) and count in ``nfe_error``."""
    if estimate is None:
        return
    call = _BoundDynamics(func, inputs, stats, None)
    call.phase = "error"
    stats.local_error = estimate.value(call)


def odeint_ext(
    func: Callable,
    y0: State,
    t,
    *,
    inputs: Optional[Dict[str, Any]] = None,
    rtol=1e-7,
    atol=1e-9,
    method: Optional[str] = None,
    options: Optional[dict] = None,
    event_fn: Optional[Callable] = None,
    max_nfe: Optional[int] = None,
    stats: Optional[SolveStats] = None,
    error_estimate: Optional[str] = None,
):
    """Solve dy/dt = func(t, y, **inputs) and backpropagate through the solver's operations.

    torchdiffeq's ``odeint`` with extra inputs: returns the states at every time in ``t``, or
    ``(event_t, solution)`` with ``event_fn``, as torchdiffeq does. NFE goes to ``stats`` (or a
    new SolveStats, see :func:`last_stats`); no evaluation past ``max_nfe`` runs.
    ``error_estimate`` ("global" or "local", methods with an embedded pair): the solver's error
    estimate, differentiable, in ``stats.local_error`` (see :mod:`odeint_ext.error_estimate`).
    """
    method = _validate(method, rtol, atol, max_nfe)
    check_error_estimate(error_estimate, method)
    inputs, stats, t = dict(inputs or {}), _start(stats), _as_time(t, y0)
    dyn = _BoundDynamics(func, inputs, stats, max_nfe)
    estimate = _watch(error_estimate, method, dyn, y0, t, rtol, atol, options)
    if estimate is not None:
        options = estimate.options(options)
    out = _solve(_odeint, dyn, y0, t, rtol=rtol, atol=atol, method=method,
                 options=options, event_fn=event_fn, event=event_fn is not None)
    _estimate_error(estimate, func, inputs, stats)
    return out


def _adjoint_options(method: str, options: Optional[dict], adjoint_method: Optional[str],
                     adjoint_options: Optional[dict], seminorm: bool) -> Tuple[str, Optional[dict]]:
    """The backward's method and options (torchdiffeq's defaults, or the seminorm's)."""
    adjoint_method = method if adjoint_method is None else adjoint_method
    if seminorm:
        if not is_adaptive(adjoint_method):
            raise ValueError(f"adjoint_seminorm needs an adaptive adjoint_method, got {adjoint_method!r}")
        # torchdiffeq inherits the forward options only when adjoint_options is None;
        # once we pass our own, carry the forward ones (max_num_steps, min_step, ...) over.
        base = adjoint_options if adjoint_options is not None else (options or {})
        adjoint_options = {k: v for k, v in base.items() if k != "norm"}
        adjoint_options["norm"] = "seminorm"
    return adjoint_method, adjoint_options


def _adjoint_tensors(func: Callable, inputs: Dict[str, Any],
                     adjoint_params: Optional[Sequence[Tensor]]) -> Tuple[List[Tensor], List[Tensor]]:
    """The inputs' own tensors (they get aliases), and the tensors the dynamics read by attribute
    or closure, used as they are (torchdiffeq's order first: adjoint_params, else func's
    parameters; then the parameters of modules among the inputs)."""
    module_params: List[Tensor] = []
    input_tensors = _unique(_grad_tensors(inputs, [], module_params))
    own = list(adjoint_params) if adjoint_params is not None else []
    func_params = list(func.parameters()) if isinstance(func, nn.Module) else []
    kept = _unique(p for p in own + func_params + module_params if p.requires_grad)
    for i, p in enumerate(kept):
        if p.grad_fn is not None and _history_reaches(p, kept[:i] + kept[i + 1:]):
            raise ValueError(
                "an adjoint parameter that func reads by closure is computed from another adjoint "
                "parameter; the adjoint would count the gradient through it twice: pass it to func "
                "in `inputs` instead")
    return input_tensors, kept


def _adjoint_run(dyn: _BoundDynamics, inputs: Dict[str, Any], input_tensors: List[Tensor], y0: State,
                 event: bool, solver_kwargs: Dict[str, Any]) -> Callable:
    """The solve :class:`_NestedAdjoint` runs over its leaves (y0's parts, t, the inputs' aliases,
    the kept tensors): torchdiffeq's odeint_adjoint with the aliases among its adjoint
    parameters, a tuple state's solution as one flat tensor (split again by _adjoint_solution)."""
    is_tuple = isinstance(y0, tuple)
    n_y0, n_in = len(y0) if is_tuple else 1, len(input_tensors)
    dims = y0[0].dim() if is_tuple else y0.dim()

    def run(leaves):
        y0_ = tuple(leaves[:n_y0]) if is_tuple else leaves[0]
        aliases = leaves[n_y0 + 1:n_y0 + 1 + n_in]
        dyn.inputs = _swap_tensors(inputs, {id(x): a for x, a in zip(input_tensors, aliases)})
        out = _odeint_adjoint(dyn, y0_, leaves[n_y0], **solver_kwargs,
                              adjoint_params=tuple(leaves[n_y0 + 1 + n_in:]) + tuple(aliases))
        event_t, solution = out if event else (None, out)
        if is_tuple:
            lead = solution[0].shape[:solution[0].dim() - dims]
            solution = torch.cat([p.reshape(*lead, -1) for p in solution], dim=-1)
        return tuple(([event_t] if event_t is not None else []) + [solution])

    return run


def _adjoint_solution(flat: Tuple[Tensor, ...], y0: State, event: bool):
    """odeint_adjoint_ext's answer from _NestedAdjoint's outputs."""
    event_t, parts = (flat[0], flat[1:]) if event else (None, flat)
    solution = _split(parts[0], [p.shape for p in y0]) if isinstance(y0, tuple) else parts[0]
    return solution if event_t is None else (event_t, solution)


def odeint_adjoint_ext(
    func: Callable,
    y0: State,
    t,
    *,
    inputs: Optional[Dict[str, Any]] = None,
    rtol=1e-7,
    atol=1e-9,
    method: Optional[str] = None,
    options: Optional[dict] = None,
    event_fn: Optional[Callable] = None,
    adjoint_rtol=None,
    adjoint_atol=None,
    adjoint_method: Optional[str] = None,
    adjoint_options: Optional[dict] = None,
    adjoint_params: Optional[Sequence[Tensor]] = None,
    adjoint_seminorm: bool = False,
    max_nfe: Optional[int] = None,
    stats: Optional[SolveStats] = None,
    error_estimate: Optional[str] = None,
):
    """Like :func:`odeint_ext`, with the adjoint backward: memory flat in the number of steps.

    Gradients reach ``y0``, ``t``, ``func``'s parameters (when it is an nn.Module), every
    floating tensor in ``inputs`` that requires grad (leaf or not) and ``adjoint_params``
    (torchdiffeq's argument, here added to the rest). ``adjoint_seminorm`` drops the
    parameter-gradient channels from the backward's error norm (Kidger et al. 2021).
    ``max_nfe`` bounds the forward solve and each backward pass, each on its own.
    ``error_estimate``: "local" only (the forward solve keeps no graph to read "global" from).
    """
    method = _validate(method, rtol, atol, max_nfe)
    check_error_estimate(error_estimate, method, adjoint=True)
    adjoint_method, adjoint_options = _adjoint_options(method, options, adjoint_method,
                                                       adjoint_options, adjoint_seminorm)
    inputs, stats, t = dict(inputs or {}), _start(stats), _as_time(t, y0)
    dyn = _BoundDynamics(func, inputs, stats, max_nfe)
    estimate = _watch(error_estimate, method, dyn, y0, t, rtol, atol, options)
    input_tensors, kept = _adjoint_tensors(func, inputs, adjoint_params)
    run = _adjoint_run(dyn, inputs, input_tensors, y0, event_fn is not None, dict(
        rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn,
        adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
        adjoint_options=adjoint_options))
    aliased = (list(y0) if isinstance(y0, tuple) else [y0]) + [t] + input_tensors
    flat = _solve(_NestedAdjoint.apply, dyn, run, len(aliased), *aliased, *kept)
    _estimate_error(estimate, func, inputs, stats)
    return _adjoint_solution(flat, y0, event_fn is not None)


def odeint_event_ext(
    func: Callable,
    y0: State,
    t0: Tensor,
    *,
    event_fn: Callable,
    inputs: Optional[Dict[str, Any]] = None,
    reverse_time: bool = False,
    odeint_interface: Callable = odeint_ext,
    **kwargs,
):
    """torchdiffeq's ``odeint_event`` with extra inputs: returns ``(event_t, solution)`` with
    the event time differentiable (implicit function theorem) with respect to ``y0``, ``func``'s
    parameters and the inputs. ``odeint_interface``: :func:`odeint_ext` or
    :func:`odeint_adjoint_ext`; ``kwargs`` go to it (tolerances, ``max_nfe``, ``stats`` ...).
    The one evaluation of ``func`` that torchdiffeq's backward makes at the event counts in
    ``nfe_backward``.
    """
    inputs = dict(inputs or {})
    solved: List[SolveStats] = []

    def at_event(t, y):  # torchdiffeq evaluates this once, in the backward
        if solved:
            solved[0].nfe_backward += 1
        return func(t, y, **inputs)

    def interface(_, y0_, t_, **kw):
        out = odeint_interface(func, y0_, t_, inputs=inputs, **kw)
        solved.append(last_stats())
        return out

    return _odeint_event(at_event, y0, t0, event_fn=event_fn, reverse_time=reverse_time,
                         odeint_interface=interface, **kwargs)
