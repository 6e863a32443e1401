"""Tests for odeint_ext's error_estimate (issue 30 item 1): the solver's embedded error ratio as a
differentiable regulariser in ``SolveStats.local_error``.

The controller's own ratios are recorded from plain torchdiffeq (its norm and accept callback);
"global" must equal their sum over accepted steps and "local" the ratio of the step it drew,
for every method with an embedded pair, tuple states, reversed time and a caller's norm.
Gradients are checked by finite differences (float64) on solves whose steps do not move with
the parameters (fixed step size through first_step = max_step).
"""

import os
import re

import pytest
import torch
import torchdiffeq
from torch import nn

from odeint_ext import (ERROR_ESTIMATE_METHODS, SettingsError, SolverSettings, SolveStats,
                        odeint_adjoint_ext, odeint_ext)
from odeint_ext import error_estimate as ee

F64 = torch.float64
SOLVES = pytest.mark.parametrize("solve", [odeint_ext, odeint_adjoint_ext], ids=["direct", "adjoint"])


class Dyn(nn.Module):
    """Time-dependent, nonlinear; a tuple state's second part decays at rates from the weights.
    Counts its accepted steps (a caller's callback, which must still be called)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 3, generator=g, dtype=F64))
        self.accepted = 0

    def forward(self, t, y, drive=0.0):
        s = 1 + 0.5 * torch.sin(3 * t)
        if isinstance(y, tuple):
            a, b = y
            return torch.tanh(a @ self.w) * s + drive, -b * self.w.diagonal().abs()
        return torch.tanh(y @ self.w) * s + drive

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1


def linf(x):
    parts = x if isinstance(x, tuple) else (x,)
    return torch.stack([p.abs().max() for p in parts]).max()


CASES = {  # name: (y0, t, rtol, options)
    "tensor": (lambda: torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.1, -1.0]], dtype=F64), [0.0, 1.5], 1e-3, None),
    "tuple": (lambda: (torch.tensor([[1.0, -0.5, 0.3]], dtype=F64), torch.tensor([2.0, -1.0, 0.5], dtype=F64)),
              [0.0, 1.5], (1e-3, 1e-4), None),
    "reversed": (lambda: torch.tensor([1.0, -0.5, 0.3], dtype=F64), [1.5, 0.0], 1e-3, None),
    "norm": (lambda: torch.tensor([1.0, -0.5, 0.3], dtype=F64), [0.0, 1.5], 1e-3, {"norm": linf}),
}


def controller_ratios(func, y0, t, method, rtol, atol, options):
    """The ratio of every accepted step, as plain torchdiffeq's controller computed it."""
    norm = (options or {}).get("norm")
    if norm is None:
        norm = ee.default_norm(isinstance(y0, tuple))
    last, accepted = [None], []

    def recording(x):
        last[0] = norm(x)
        return last[0]

    class Recorder(nn.Module):
        def forward(self, t, y):
            return func(t, y)

        def callback_accept_step(self, t0, y0, dt):
            accepted.append(float(last[0]))

    with torch.no_grad():
        solution = torchdiffeq.odeint(Recorder(), y0, torch.tensor(t, dtype=F64), rtol=rtol, atol=atol,
                                      method=method, options=dict(options or {}, norm=recording))
    return accepted, solution


def draw_step(monkeypatch, k):
    """"local" draws the k-th accepted step (1-based): the reservoir keeps the n-th step when
    randrange(n) is 0."""

    class Fixed:
        def randrange(self, n):
            return 0 if n <= k else 1

    monkeypatch.setattr(ee, "_draws", Fixed)


def test_torchdiffeq_private_tableaus_and_norms_are_where_we_read_them():
    # The one workaround of a missing public API: this fails if torchdiffeq moves them.
    for method in ERROR_ESTIMATE_METHODS:
        alpha, beta, c_sol, c_error = ee._torchdiffeq_tableau(method)
        assert len(beta) == len(alpha) and len(c_sol) == len(c_error) == len(alpha) + 1
    from torchdiffeq._impl.misc import _mixed_norm, _rms_norm
    x = torch.tensor([3.0, 4.0])
    assert ee.default_norm(False)(x) == pytest.approx((12.5) ** 0.5) == float(_rms_norm(x))
    assert ee.default_norm(True)((x, x * 2)) == pytest.approx((50.0) ** 0.5) == float(_mixed_norm((x, x * 2)))


def test_default_norms_have_a_finite_gradient_where_the_error_is_zero():
    """torchdiffeq's RMS has sqrt's infinite slope at 0: 0 x inf = NaN in every gradient."""
    from torchdiffeq._impl.misc import _rms_norm
    zero = torch.zeros(3, dtype=F64, requires_grad=True)
    _rms_norm(zero).backward()
    assert torch.isnan(zero.grad).all()  # the defect, as torchdiffeq has it
    zero.grad = None
    ee.default_norm(False)(zero).backward()
    assert torch.equal(zero.grad, torch.zeros(3, dtype=F64))
    # a tuple: every part is in the graph, the largest takes the gradient
    zero.grad = None
    other = torch.tensor([-1e-3], dtype=F64, requires_grad=True)
    value = ee.default_norm(True)((other, zero))
    value.backward()
    assert float(value) == 1e-3
    assert torch.equal(zero.grad, torch.zeros(3, dtype=F64)) and float(other.grad) == -1.0


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ERROR_ESTIMATE_METHODS)
def test_global_is_the_sum_of_the_controllers_accepted_ratios(method, case):
    make_y0, t, rtol, options = CASES[case]
    f = Dyn()
    ratios, reference = controller_ratios(f, make_y0(), t, method, rtol, 1e-4, options)
    f.accepted, stats = 0, SolveStats()
    out = odeint_ext(f, make_y0(), t, rtol=rtol, atol=1e-4, method=method, options=options,
                     stats=stats, error_estimate="global")
    assert len(ratios) > 2 and f.accepted == len(ratios)  # the caller's callback still runs
    assert stats.local_error.dim() == 0 and stats.local_error.requires_grad
    assert stats.local_error.item() == pytest.approx(sum(ratios), rel=1e-12)
    assert stats.nfe_error == 0
    as_tuple = (lambda x: x if isinstance(x, tuple) else (x,))
    assert all(torch.equal(a.detach(), b) for a, b in zip(as_tuple(out), as_tuple(reference)))  # solve unchanged


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ERROR_ESTIMATE_METHODS)
def test_local_retakes_the_drawn_step_with_the_controllers_ratio(method, case, monkeypatch):
    make_y0, t, rtol, options = CASES[case]
    f = Dyn()
    ratios, _ = controller_ratios(f, make_y0(), t, method, rtol, 1e-4, options)
    n = len(ratios)  # 3 (dopri8) to 91 (adaptive_heun, tuple); rejected steps in several cases
    for solve in (odeint_ext, odeint_adjoint_ext):
        for k in sorted({1, 2, n // 3, n // 2, n - 1, n} if solve is odeint_ext else {1, n // 2, n}):
            draw_step(monkeypatch, k)
            stats = SolveStats()
            solve(f, make_y0(), t, rtol=rtol, atol=1e-4, method=method, options=options, stats=stats,
                  error_estimate="local")
            assert stats.local_error.item() == pytest.approx(ratios[k - 1], rel=1e-9, abs=1e-15), (solve, k)
            stages = len(ee._torchdiffeq_tableau(method)[0])
            assert stats.nfe_error == stages + 1  # the step's stages and f at its start, for the gradient


def test_local_draws_every_accepted_step_and_the_seed_fixes_it():
    f, y0 = Dyn(), torch.tensor([1.0, -0.5, 0.3], dtype=F64)
    ratios, _ = controller_ratios(f, y0, [0.0, 1.5], "bosh3", 1e-3, 1e-4, None)

    def local(seed):
        torch.manual_seed(seed)
        stats = SolveStats()
        odeint_ext(f, y0, [0.0, 1.5], rtol=1e-3, atol=1e-4, method="bosh3", stats=stats, error_estimate="local")
        return stats.local_error.item()

    drawn = [local(seed) for seed in range(24)]
    assert local(3) == drawn[3]
    indices = {min(range(len(ratios)), key=lambda i: abs(ratios[i] - v)) for v in drawn}
    assert all(min(abs(r - v) for r in ratios) < 1e-12 for v in drawn)
    assert len(indices) >= len(ratios) // 2  # uniform over the accepted steps, not one of them


def test_local_costs_stages_only_without_gradients_and_leaves_the_solve_alone():
    f, y0 = Dyn(), torch.tensor([1.0, -0.5, 0.3], dtype=F64)
    plain, stats = SolveStats(), SolveStats()
    a = odeint_ext(f, y0, [0.0, 1.5], rtol=1e-3, atol=1e-4, stats=plain)
    with torch.no_grad():
        b = odeint_ext(f, y0, [0.0, 1.5], rtol=1e-3, atol=1e-4, stats=stats, error_estimate="local")
    assert torch.equal(a.detach(), b) and stats.nfe_forward == plain.nfe_forward
    assert stats.nfe_error == 6 and not stats.local_error.requires_grad  # dopri5's stages after the first
    assert plain.local_error is None and plain.nfe_error == 0


FIXED = dict(rtol=1e-1, atol=1e-1, method="bosh3")


def fixed_step(h):
    return {"first_step": h, "max_step": h}  # the steps do not move with the parameters


@pytest.mark.parametrize("kind", ["global", "local"])
def test_gradients_match_finite_differences(kind):
    # float64; "global" over 4 steps (through the trajectory), "local" on a one-step solve, where
    # the drawn step starts at y0 and its gradient reaches y0 too.
    f = Dyn()
    drive = torch.tensor([0.3, -0.2, 0.1], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, -0.5, 0.3]], dtype=F64, requires_grad=True)
    h = 0.25 if kind == "global" else 1.0
    for solve in ((odeint_ext,) if kind == "global" else (odeint_ext, odeint_adjoint_ext)):
        def estimate(w, drive, y0):
            stats = SolveStats()
            solve(f, y0, [0.0, 1.0], inputs={"drive": drive}, options=fixed_step(h), stats=stats,
                  error_estimate=kind, **FIXED)
            assert f.w is w and stats.local_error.item() > 1e-4
            assert stats.nfe_forward == 1 + 3 * round(1 / h)  # every step of size h accepted
            return stats.local_error

        assert torch.autograd.gradcheck(estimate, (f.w, drive, y0), eps=1e-6, atol=1e-8, rtol=1e-5)


def test_local_from_a_later_step_takes_its_start_as_given():
    f = Dyn()
    y0 = torch.tensor([[1.0, -0.5, 0.3]], dtype=F64, requires_grad=True)
    torch.manual_seed(0)
    for _ in range(20):  # until a later step is drawn
        stats = SolveStats()
        odeint_ext(f, y0, [0.0, 1.0], options=fixed_step(0.25), stats=stats, error_estimate="local", **FIXED)
        w_grad, y0_grad = torch.autograd.grad(stats.local_error, (f.w, y0), allow_unused=True)
        if y0_grad is None:
            break
    assert y0_grad is None and w_grad.abs().sum() > 0


class Rotation(nn.Module):
    def __init__(self):
        super().__init__()
        self.omega = nn.Parameter(torch.tensor(6.0))

    def forward(self, t, y):
        return self.omega * torch.stack([-y[..., 1], y[..., 0]], -1) - 0.1 * y ** 3


@SOLVES
def test_a_few_steps_on_local_error_alone_lower_the_next_solves_nfe(solve):
    # Sign-gradient steps (Adam's first step): torch.optim's first step imports torch._dynamo (~6 s).
    torch.manual_seed(0)
    f, y0, tol = Rotation(), torch.tensor([[1.0, 0.0], [0.5, 0.5]]), dict(rtol=1e-4, atol=1e-5)
    nfe = []
    for _ in range(4):
        stats = SolveStats()
        solve(f, y0, [0.0, 2.0], stats=stats, error_estimate="local", **tol)
        (grad,) = torch.autograd.grad(stats.local_error, [f.omega])
        with torch.no_grad():
            f.omega -= 0.5 * grad.sign()
        nfe.append(stats.nfe_forward)
    after = SolveStats()
    with torch.no_grad():
        odeint_ext(f, y0, [0.0, 2.0], stats=after, **tol)
    assert after.nfe_forward < 0.8 * nfe[0], (nfe, after.nfe_forward, f.omega.item())


@SOLVES
def test_methods_without_an_embedded_pair_are_refused(solve):
    for method in ("rk4", "euler", "explicit_adams", "scipy_solver"):
        with pytest.raises(ValueError, match=f"method '{method}' has none") as e:
            solve(Dyn(), torch.ones(3, dtype=F64), [0.0, 1.0], method=method, error_estimate="local")
        assert all(m in str(e.value) for m in ERROR_ESTIMATE_METHODS)
    with pytest.raises(ValueError, match="None, 'global' or 'local'"):
        solve(Dyn(), torch.ones(3, dtype=F64), [0.0, 1.0], error_estimate="all")


def test_global_under_the_adjoint_is_refused_and_says_why():
    with pytest.raises(ValueError, match="adjoint's forward solve runs without a graph"):
        odeint_adjoint_ext(Dyn(), torch.ones(3, dtype=F64), [0.0, 1.0], error_estimate="global")


def test_solver_settings_pass_it_and_refuse_what_cannot_work():
    f, y0 = Dyn(), torch.tensor([1.0, -0.5, 0.3], dtype=F64)
    for backprop in ("adjoint", "direct"):
        stats = SolveStats()
        SolverSettings(backprop=backprop).solve(f, y0, stats=stats, error_estimate="local")
        assert stats.local_error.requires_grad and stats.nfe_error > 0
    stats = SolveStats()
    SolverSettings(backprop="direct").solve(f, y0, stats=stats, error_estimate="global")
    assert stats.local_error.requires_grad
    with pytest.raises(SettingsError, match="error_estimate global needs backprop direct"):
        with torch.no_grad():  # refused whether or not this solve would take the adjoint
            SolverSettings(backprop="adjoint").solve(f, y0, error_estimate="global")
    with pytest.raises(SettingsError, match="needs a method with an embedded error estimate.*'rk4'"):
        SolverSettings(method="rk4").check_error_estimate("local")


def test_the_docs_example_runs_as_printed():
    page = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "odeint_ext.md")
    code = re.findall(r"```python\n(.*?)```", open(page).read(), re.S)[2]
    assert 'error_estimate="local"' in code
    scope = {}
    exec(compile(code, "docs/odeint_ext.md", "exec"), scope)
    printed = re.search(r"print\(nfe, stats.nfe_error\)  # (\[.*\]) (\d+)", code)
    assert scope["nfe"] == eval(printed.group(1)) and scope["stats"].nfe_error == int(printed.group(2))
