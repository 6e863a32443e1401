"""odeint_ext / odeint_adjoint_ext as a drop-in superset of torchdiffeq (issue #15).

The same calls run through torchdiffeq and through odeint_ext: solutions, event times, the
callbacks' call sequences (with their arguments) and gradients must agree (float64, 1e-8).
CPU only, tiny problems.
"""

import pytest
import torch
import torchdiffeq
from torch import nn

from odeint_ext import MaxNFEExceeded, SolveStats, odeint_adjoint_ext, odeint_event_ext, odeint_ext

F64 = torch.float64
TOL = 1e-8
PAIRS = pytest.mark.parametrize(
    "ref, ext",
    [(torchdiffeq.odeint, odeint_ext), (torchdiffeq.odeint_adjoint, odeint_adjoint_ext)],
    ids=["direct", "adjoint"],
)
CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def close(a, b, tol=TOL):
    """Tensors, or nested tuples of tensors, equal up to tol (relative to the larger of 1, |b|)."""
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(((a - b).abs() <= tol * b.abs().clamp(min=1)).all())


def _clone(x):
    if isinstance(x, (tuple, list)):
        return tuple(_clone(v) for v in x)
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


class Forced(nn.Module):
    """A fast-forced damped system (dopri5 rejects steps on it); records every callback call.

    Works with a tensor state (2,) or a tuple state ((2,), (1,)). Each callback records the
    object it was called on, so the tests see whether the user's object (not a wrapper) got it.
    """

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(2, 2, generator=g, dtype=F64) * 0.5)
        self.b = nn.Parameter(torch.randn(2, generator=g, dtype=F64))
        self.calls = []
        self.evals = 0

    def forward(self, t, y):
        self.evals += 1
        if isinstance(y, tuple):
            y, z = y
            dy = torch.tanh(self.W @ y + self.b * torch.cos(12 * t)) - 0.3 * y + 0.1 * z
            return dy, -z + y[:1] ** 2
        return torch.tanh(self.W @ y + self.b * torch.cos(12 * t)) - 0.3 * y


def _add_callbacks(cls):
    for name in CALLBACKS + tuple(n + "_adjoint" for n in CALLBACKS):
        def callback(self, t0, y0, dt, _name=name):
            self.calls.append((_name, self, _clone(t0), _clone(y0), _clone(dt)))
        setattr(cls, name, callback)
    return cls


ForcedWithCallbacks = _add_callbacks(type("ForcedWithCallbacks", (Forced,), {}))


def _problem(tuple_state, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    y0 = torch.randn(2, generator=g, dtype=F64).requires_grad_(True)
    if tuple_state:
        return (y0, torch.randn(1, generator=g, dtype=F64).requires_grad_(True))
    return y0


def _leaves(func, y0, t=None):
    leaves = list(y0) if isinstance(y0, tuple) else [y0]
    leaves += list(func.parameters())
    if t is not None and t.requires_grad:
        leaves.append(t)
    return leaves


def _fresh(y0):
    if isinstance(y0, tuple):
        return tuple(p.detach().clone().requires_grad_(True) for p in y0)
    return y0.detach().clone().requires_grad_(True)


def _loss(solution):
    parts = solution if isinstance(solution, tuple) else (solution,)
    return sum((p * torch.linspace(0.5, 1.5, p.numel(), dtype=F64).reshape(p.shape)).sum() for p in parts)


def _run(solve, func, y0, t, **kwargs):
    """Solve, backpropagate a fixed weighted sum; return (solution, grads, callback calls)."""
    func.calls.clear()
    sol = solve(func, y0, t, **kwargs)
    loss = _loss(sol)
    grads = torch.autograd.grad(loss, _leaves(func, y0, t), allow_unused=True)
    return sol, grads, list(func.calls)


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
@pytest.mark.parametrize("reverse", [False, True], ids=["t-up", "t-down"])
@PAIRS
def test_callbacks_same_sequence_and_arguments_as_torchdiffeq(ref, ext, tuple_state, reverse):
    func = ForcedWithCallbacks()
    y0 = _problem(tuple_state)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=F64)
    if reverse:
        t = t.flip(0)
    kw = dict(rtol=1e-4, atol=1e-6, method="dopri5", options=dict(first_step=0.5))
    sol_r, grads_r, calls_r = _run(ref, func, y0, t, **kw)
    sol_e, grads_e, calls_e = _run(ext, func, _fresh(y0), t, **kw)

    names = [c[0] for c in calls_r]
    # The problem exercises every callback torchdiffeq makes (the adjoint ones only under the adjoint).
    expected = set(CALLBACKS)
    if ref is torchdiffeq.odeint_adjoint:
        expected |= {n + "_adjoint" for n in CALLBACKS}
    assert set(names) == expected, set(names)
    assert [c[0] for c in calls_e] == names
    for (name, obj, t0, y, dt), (_, obj_r, t0_r, y_r, dt_r) in zip(calls_e, calls_r):
        assert obj is func and obj_r is func  # a bound method of the user's object
        assert close(t0, t0_r) and close(y, y_r) and close(dt, dt_r), name
        if tuple_state and not name.endswith("_adjoint"):
            assert isinstance(y, tuple) and len(y) == 2  # the user's state shape, as torchdiffeq gives
    assert close(sol_e, sol_r)
    assert close(grads_e, grads_r)


@PAIRS
def test_callbacks_not_defined_are_not_invented(ref, ext):
    func = Forced()
    assert not hasattr(func, "callback_step")
    y0 = _problem(False)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    stats = SolveStats()
    sol = ext(func, y0, t, stats=stats)
    assert stats.nfe_forward == func.evals > 0
    assert close(sol, ref(func, y0, t))


@pytest.mark.filterwarnings("ignore:Solver 'rk4' does not support callbacks")
@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", dict(step_size=0.25))],
                         ids=["dopri5", "rk4"])
def test_callbacks_with_inputs_and_nfe(method, options):
    """With extra inputs (no torchdiffeq twin): callbacks still fire, NFE still counted."""

    class WithInput(ForcedWithCallbacks):
        def forward(self, t, y, *, k):
            return super().forward(t, y) + k

    func = WithInput()
    k = torch.tensor([0.1, -0.2], dtype=F64, requires_grad=True)
    stats = SolveStats()
    sol = odeint_adjoint_ext(func, _problem(False), [0.0, 1.0], inputs={"k": k}, method=method,
                             options=options, stats=stats)
    n_forward = func.evals
    forward_calls = [c[0] for c in func.calls]
    assert "callback_step" in forward_calls and stats.nfe_forward == n_forward
    sol[-1].sum().backward()
    assert any(c[0] == "callback_step_adjoint" for c in func.calls)
    assert stats.nfe_backward == func.evals - n_forward > 0
    assert k.grad is not None and k.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


class Decay(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([0.8, 1.3], dtype=F64))
        self.evals = 0

    def forward(self, t, y):
        self.evals += 1
        return -self.k * y + 0.1 * torch.sin(3 * t)


def event_fn(t, y):
    return y.sum() - 0.4  # decays through 0.4


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", dict(step_size=0.05))],
                         ids=["dopri5", "rk4"])
@PAIRS
def test_event_fn_same_event_time_solution_and_grads(ref, ext, method, options):
    func = Decay()
    y0 = torch.tensor([0.9, 0.6], dtype=F64, requires_grad=True)
    t0 = torch.tensor([0.0, 10.0], dtype=F64)  # torchdiffeq's event mode wants two times
    kw = dict(rtol=1e-9, atol=1e-10, method=method, options=options, event_fn=event_fn)

    out = []
    for solve, y in ((ref, y0), (ext, _fresh(y0))):
        event_t, sol = solve(func, y, t0, **kw)
        loss = _loss(sol[-1]) + 2.0 * event_t
        out.append((event_t, sol, torch.autograd.grad(loss, [y, func.k], allow_unused=True)))
    (t_r, sol_r, g_r), (t_e, sol_e, g_e) = out
    assert 0.1 < float(t_r.detach()) < 10.0 and close(event_fn(t_r, sol_r[-1]), torch.zeros((), dtype=F64), 1e-6)
    assert close(t_e, t_r) and close(sol_e, sol_r) and close(g_e, g_r)
    assert all(g is not None and g.abs().sum() > 0 for g in g_r)


@PAIRS
def test_odeint_event_gradient_through_the_event_time(ref, ext):
    """torchdiffeq.odeint_event with odeint_ext as its interface: the implicit gradient of the
    event time reaches y0 and the parameters, as with torchdiffeq's own odeint."""
    func = Decay()
    y0 = torch.tensor([0.9, 0.6], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=F64)
    kw = dict(rtol=1e-9, atol=1e-10, method="dopri5", event_fn=event_fn)
    out = []
    for interface, y in ((ref, y0), (ext, _fresh(y0))):
        event_t, sol = torchdiffeq.odeint_event(func, y, t0, odeint_interface=interface, **kw)
        grads = torch.autograd.grad(event_t, [y, func.k])
        out.append((event_t, sol, grads))
    (t_r, sol_r, g_r), (t_e, sol_e, g_e) = out
    assert close(t_e, t_r) and close(sol_e, sol_r) and close(g_e, g_r)
    # Against the closed form's sign: a larger y0 or a slower decay delays the event.
    assert (g_e[0] > 0).all() and (g_e[1] < 0).all()


class DrivenDecay(Decay):
    def forward(self, t, y, *, drive):
        return super().forward(t, y) * drive[0] + drive[1]


class Closure(nn.Module):
    """The torchdiffeq way: the extra tensor captured, listed in adjoint_params."""

    def __init__(self, inner, drive):
        super().__init__()
        self.inner, self.drive = inner, drive

    def forward(self, t, y):
        return self.inner(t, y, drive=self.drive)


@PAIRS
def test_odeint_event_ext_gradient_through_the_event_time_reaches_inputs(ref, ext):
    func = DrivenDecay()
    scale = torch.tensor(1.2, dtype=F64, requires_grad=True)
    shift = torch.tensor([0.01, -0.02], dtype=F64, requires_grad=True)
    y0 = torch.tensor([0.9, 0.6], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=F64)
    kw = dict(rtol=1e-9, atol=1e-10, method="dopri5", event_fn=event_fn)
    extra = dict(adjoint_params=(*func.parameters(), scale, shift)) if ref is torchdiffeq.odeint_adjoint else {}
    drive = (scale * 1.0, shift)  # one non-leaf, one leaf
    t_r, sol_r = torchdiffeq.odeint_event(Closure(func, drive), y0, t0, odeint_interface=ref, **kw, **extra)
    g_r = torch.autograd.grad(t_r + sol_r[-1].sum(), [y0, func.k, scale, shift])
    stats = SolveStats()
    y0_e = _fresh(y0)
    t_e, sol_e = odeint_event_ext(func, y0_e, t0, inputs={"drive": (scale * 1.0, shift)},
                                  odeint_interface=ext, stats=stats, **kw)
    n_backward = stats.nfe_backward
    g_e = torch.autograd.grad(t_e + sol_e[-1].sum(), [y0_e, func.k, scale, shift])
    assert close(t_e, t_r) and close(sol_e, sol_r) and close(g_e, g_r)
    assert all(g.abs().sum() > 0 for g in g_e)
    # torchdiffeq's gradient rerouting evaluates func once at the event, counted as backward.
    assert n_backward == 0 and stats.nfe_forward > 0
    if ext is odeint_ext:
        assert stats.nfe_backward == 1
    else:
        assert stats.nfe_backward > 1


@PAIRS
def test_max_nfe_stops_an_event_that_never_comes(ref, ext):
    func = Decay()
    stats = SolveStats()
    with pytest.raises(MaxNFEExceeded) as info:
        ext(func, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
            event_fn=lambda t, y: y.sum() + 1.0, max_nfe=200, stats=stats)
    assert func.evals == 200 and stats.nfe_forward == 201 and info.value.phase == "forward"


def test_event_nfe_forward_and_backward_counted():
    func = Decay()
    stats = SolveStats()
    event_t, sol = odeint_adjoint_ext(func, torch.tensor([0.9, 0.6], dtype=F64, requires_grad=True),
                                      torch.tensor([0.0, 10.0], dtype=F64), event_fn=event_fn,
                                      stats=stats)
    assert stats.nfe_forward == func.evals > 0
    sol[-1].sum().backward()
    assert stats.nfe_backward == func.evals - stats.nfe_forward > 0


# --------------------------------------------------------------------------------------------
# Keywords: defaults, method=None, adjoint_params, tensor tolerances
# --------------------------------------------------------------------------------------------


@PAIRS
def test_defaults_are_torchdiffeqs(ref, ext):
    func = Forced()
    y0 = _problem(False)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    func.evals = 0
    sol_r = ref(func, y0, t)
    n_ref = func.evals
    func.evals = 0
    stats = SolveStats()
    sol_e = ext(func, y0, t, stats=stats)
    sol_none = ext(func, y0, t, method=None)
    # rtol=1e-7, atol=1e-9, dopri5: the very same steps.
    assert stats.nfe_forward == n_ref and torch.equal(sol_e, sol_r) and torch.equal(sol_none, sol_r)
    loose = ext(func, y0, t, rtol=1e-3, atol=1e-3)
    assert not torch.equal(loose, sol_r)  # the defaults are not whatever tolerance


def test_tensor_tolerances_as_torchdiffeq():
    func = Forced()
    y0 = _problem(True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    kw = dict(rtol=(1e-6, 1e-4), atol=torch.tensor(1e-8, dtype=F64))
    assert close(odeint_ext(func, y0, t, **kw), torchdiffeq.odeint(func, y0, t, **kw))


def test_adjoint_params_closure_tensors_like_torchdiffeq():
    c = torch.tensor([0.5, -0.7], dtype=F64, requires_grad=True)
    def f(t, y):
        return -c * y + 0.1
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    sol_r = torchdiffeq.odeint_adjoint(f, y0, t, adjoint_params=(c,))
    g_r = torch.autograd.grad(_loss(sol_r), [y0, c])
    sol_e = odeint_adjoint_ext(f, y0, t, adjoint_params=(c,))
    g_e = torch.autograd.grad(_loss(sol_e), [y0, c])
    assert close(sol_e, sol_r) and close(g_e, g_r) and g_e[1].abs().sum() > 0
    # A plain function with nothing that needs grad: fine without adjoint_params (torchdiffeq
    # would ask for them), and the closure tensor then gets no gradient, as documented.
    sol = odeint_adjoint_ext(f, y0, t)
    assert torch.autograd.grad(sol[-1].sum(), [y0, c], allow_unused=True)[1] is None


def test_adjoint_params_added_without_double_counting():
    func = Forced()
    c = torch.tensor([0.2, 0.1], dtype=F64, requires_grad=True)
    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = func
        def forward(self, t, y):
            return self.inner(t, y) + c
    shifted = Shifted()
    y0 = _problem(False)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    leaves = [y0, func.W, func.b, c]
    kw = dict(rtol=1e-6, atol=1e-8)
    direct = torch.autograd.grad(_loss(odeint_ext(shifted, y0, t, **kw)), leaves)
    # The parameters listed again (and twice) next to the closure tensor: each counted once.
    twice = [func.W, func.W, func.b, c, c]
    adj = torch.autograd.grad(_loss(odeint_adjoint_ext(shifted, y0, t, adjoint_params=twice, **kw)), leaves)
    assert close(adj, direct, 1e-4)  # counted twice, W's and c's gradients would be off by 100%
    ref = torchdiffeq.odeint_adjoint(shifted, y0, t, adjoint_params=[func.W, func.b, c], **kw)
    assert close(adj, torch.autograd.grad(_loss(ref), leaves), TOL)


def test_adjoint_param_computed_from_another_is_refused():
    func = Forced()
    c = func.b * 2  # non-leaf, from a parameter of func, read by closure
    def f(t, y):
        return func(t, y) + c
    y0 = _problem(False)
    with pytest.raises(ValueError, match="computed from another adjoint parameter.*inputs"):
        odeint_adjoint_ext(f, y0, [0.0, 1.0], adjoint_params=list(func.parameters()) + [c])
    # Computed from a tensor that is not an adjoint parameter: fine, and exact.
    x = torch.tensor([0.3, 0.4], dtype=F64, requires_grad=True)
    kw = dict(rtol=1e-7, atol=1e-9)
    grads = []
    for adjoint in (True, False):
        c2 = x * 2
        def f2(t, y):
            return func(t, y) + c2
        if adjoint:
            sol = odeint_adjoint_ext(f2, y0, [0.0, 1.0], adjoint_params=[c2, *func.parameters()], **kw)
        else:
            sol = odeint_ext(f2, y0, [0.0, 1.0], **kw)
        grads.append(torch.autograd.grad(_loss(sol), [x]))
    assert close(grads[0], grads[1], 1e-4) and grads[0][0].abs().sum() > 0


def test_time_gradient_like_torchdiffeq():
    func = Forced()
    y0 = _problem(False)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64, requires_grad=True)
    kw = dict(rtol=1e-5, atol=1e-7)
    g_r = torch.autograd.grad(_loss(torchdiffeq.odeint_adjoint(func, y0, t, **kw)), [y0, t])
    g_e = torch.autograd.grad(_loss(odeint_adjoint_ext(func, y0, t, **kw)), [y0, t])
    assert close(g_e, g_r) and g_e[1].abs().sum() > 0


@pytest.mark.parametrize("shape", [(), (2, 2)])
@pytest.mark.parametrize("adjoint_options", [None, {}, {"norm": "seminorm"}], ids=["none", "empty", "seminorm"])
def test_solution_node_shows_the_adjoint_settings_like_torchdiffeq(shape, adjoint_options):
    """torchdiffeq's adjoint solution carries its backward's settings on ``grad_fn`` (its own
    norm tests swap ``grad_fn.adjoint_options["norm"]`` for a spy): odeint_adjoint_ext's
    solution shows the same values, and a norm swapped there is the one its backward calls,
    with the same augmented state (t, y, adj_y, adj_params...)."""
    scale = torch.tensor([0.3, 0.5], dtype=F64, requires_grad=True)

    def f(t, y):
        return y * scale.sum()

    runs = []
    for solve in (torchdiffeq.odeint_adjoint, odeint_adjoint_ext):
        y0 = torch.ones(shape, dtype=F64, requires_grad=True)
        kwargs = {} if adjoint_options is None else {"adjoint_options": dict(adjoint_options)}
        ys = solve(f, y0, torch.tensor([0.0, 1.0], dtype=F64), method="dopri5", adjoint_params=(scale,),
                   adjoint_rtol=1e-6, adjoint_atol=1e-8, **kwargs)
        node = ys.grad_fn
        settings = (node.adjoint_rtol, node.adjoint_atol, node.adjoint_method,
                    sorted(node.adjoint_options), node.t_requires_grad, node.event_mode)
        real_norm, calls = node.adjoint_options["norm"], []

        def spy(state):
            calls.append(tuple(tuple(s.shape) for s in state))
            return real_norm(state)

        node.adjoint_options["norm"] = spy
        scale.grad = None
        ys.sum().backward()
        runs.append((settings, calls, y0.grad, scale.grad))
    (s_ref, calls_ref, gy_ref, gs_ref), (s_ext, calls_ext, gy_ext, gs_ext) = runs
    assert s_ext == s_ref and s_ref[:3] == (1e-6, 1e-8, "dopri5")
    assert calls_ext and calls_ext == calls_ref
    assert calls_ref[0] == ((), shape, shape, (2,))
    assert close(gy_ext, gy_ref) and close(gs_ext, gs_ref)
