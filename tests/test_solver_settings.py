"""odeint_ext.SolverSettings: one checked value for a solve, and the flags that make it."""

from dataclasses import replace

import pytest
import torch

from odeint_ext import (MaxNFEExceeded, RK_ADAPTIVE_METHODS, SettingsError, SolverSettings, SolveStats,
                        odeint_ext)


@pytest.mark.parametrize("kw, field", [
    (dict(method="runge"), "method"),
    (dict(rtol=0.0), "rtol"),
    (dict(atol=float("nan")), "atol"),
    (dict(ts=(1.0, 0.0)), "ts"),
    (dict(backprop="both"), "backprop"),
    (dict(max_nfe=0), "max_nfe"),
    (dict(steps=4), "steps"),  # dopri5 chooses its own
    (dict(method="rk4", max_num_steps=10), "max_num_steps"),
    (dict(method="scipy_solver", backprop="direct"), "backprop"),
    (dict(method="rk4", min_step=0.1), "min_step"),
    (dict(first_step=0.0), "first_step"),
    (dict(method="euler", seminorm=True), "seminorm"),
])
def test_bad_settings_name_the_field_and_can_name_a_flag(kw, field):
    with pytest.raises(SettingsError, match=field) as info:
        SolverSettings(**kw)
    assert "--X-" + field in info.value.naming(lambda f: "--X-" + f)


def test_fixed_step_is_rk4_on_a_grid_without_budget():
    s = SolverSettings(method="dopri5", max_nfe=10, max_num_steps=5, first_step=0.1, seminorm=True,
                       ts=(0.0, 2.0))
    f = s.fixed_step(4)
    assert (f.method, f.steps, f.max_nfe, f.seminorm) == ("rk4", 4, None, False)
    assert f.options() == {"step_size": 0.5} and f.ts == s.ts and f.rtol == s.rtol


def test_fixed_step_with_another_method_drops_the_adaptive_options():
    """Decoding an adaptive_heun model trained with a first step on a Heun grid."""
    s = SolverSettings(method="adaptive_heun", rtol=0.1, atol=0.1, first_step=1.0, min_step=0.01)
    f = s.fixed_step(5, "heun2")
    assert (f.method, f.steps, f.first_step, f.min_step) == ("heun2", 5, None, None)
    assert f.options() == {"step_size": 0.2}
    with pytest.raises(SettingsError, match="'dopri5' is not a fixed-grid method"):
        s.fixed_step(2, "dopri5")


def test_norm_goes_only_to_methods_that_take_one():
    norm = object()
    for method in RK_ADAPTIVE_METHODS:
        assert SolverSettings(method=method).options(norm)["norm"] is norm
    assert SolverSettings(method="scipy_solver").options(norm) is None
    assert SolverSettings(method="rk4").options(norm) is None


def test_solve_uses_the_adjoint_only_when_gradients_are_needed():
    a = torch.tensor(-0.7, requires_grad=True)
    y0 = torch.ones(3, dtype=torch.float64)

    def f(t, y, a):
        return a * y

    s = SolverSettings(rtol=1e-8, atol=1e-8, backprop="adjoint", max_nfe=10_000)
    stats = SolveStats()
    y1 = s.solve(f, y0, inputs={"a": a}, stats=stats)[-1]
    y1.sum().backward()
    assert stats.nfe_backward > 0  # the adjoint's own solve
    expected = (y0 * torch.exp(a.detach().double())).sum().float()
    torch.testing.assert_close(a.grad, expected, rtol=1e-5, atol=0)
    with torch.no_grad():
        stats = SolveStats()
        out = s.solve(f, y0, inputs={"a": a}, stats=stats)
    assert stats.nfe_forward > 0 and stats.nfe_backward == 0
    ref = odeint_ext(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), inputs={"a": a},
                     rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_direct_backprop_differentiates_through_the_steps():
    a = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    s = SolverSettings(rtol=1e-8, atol=1e-8, backprop="direct")
    stats = SolveStats()
    s.solve(lambda t, y, a: a * y, torch.ones(3, dtype=torch.float64), inputs={"a": a},
            stats=stats)[-1].sum().backward()
    assert stats.nfe_backward == 0
    torch.testing.assert_close(a.grad, 3 * torch.exp(a.detach()), rtol=1e-6, atol=0)


class _Drift(torch.nn.Module):
    """dy/dt = 1e-4 p: an adaptive solver's easiest problem (its first-step guess spans the
    interval, and a step has no error), solved on a fixed grid like any other."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.ones(()))

    def forward(self, t, y):
        return 1e-4 * self.p * torch.ones_like(y)


def _solve_and_backward(settings):
    stats = SolveStats()
    y = settings.solve(_Drift(), torch.ones(3), stats=stats)
    (1e-3 * y[-1].sum()).backward()
    return stats


@pytest.mark.parametrize("kw, fewest", [
    # adaptive: the evaluation at t0, the first-step guess, one step's stages
    (dict(method="dopri5"), 1 + 1 + 6),
    (dict(method="dopri8"), 1 + 1 + 13),
    (dict(method="bosh3"), 1 + 1 + 3),
    (dict(method="fehlberg2"), 1 + 1 + 2),
    (dict(method="adaptive_heun"), 1 + 1 + 1),
    # a first step of 0.01 (no guess) grows tenfold a step: 0.01 + 0.1 + 1 reach 1 in 3 steps
    (dict(method="dopri5", first_step=0.01), 1 + 3 * 6),
    (dict(method="dopri5", first_step=0.01, min_step=0.5), 1 + 2 * 6),
    # the adjoint solves each interval of ts afresh: twice the forward's minimum
    (dict(method="dopri5", ts=(0.0, 0.5, 1.0)), 2 * 8),
    (dict(method="dopri5", ts=(0.0, 0.5, 1.0), backprop="direct"), 8),
    # fixed grids: evaluations per step x steps
    (dict(method="euler", steps=3), 3),
    (dict(method="midpoint", steps=3), 6),
    (dict(method="heun2", steps=2), 4),
    (dict(method="heun3", steps=2), 6),
    (dict(method="rk4", steps=8), 32),
    (dict(method="rk4"), 4),  # the grid is ts: one step
    # the adjoint's grid per interval: 0.3 / 0.25 -> 2 steps, 0.7 / 0.25 -> 3 (forward: 4)
    (dict(method="rk4", ts=(0.0, 0.3, 1.0), steps=4), 4 * (2 + 3)),
    # Adams: two rk4 steps, then 1 (explicit) or 2 (implicit, converged at once) a step
    (dict(method="explicit_adams", steps=5), 8 + 3),
    (dict(method="implicit_adams", steps=5), 8 + 6),
    (dict(method="fixed_adams", steps=1), 4),
])
def test_fewest_evaluations_is_what_torchdiffeq_needs_at_least(kw, fewest):
    """The floor below which a budget fails every solve: at the floor the easiest problem
    solves (forward and adjoint backward), one below it it cannot."""
    settings = SolverSettings(**kw)
    assert settings.fewest_evaluations() == fewest
    stats = _solve_and_backward(replace(settings, max_nfe=fewest))
    assert max(stats.nfe_forward, stats.nfe_backward) == fewest
    with pytest.raises(MaxNFEExceeded):
        _solve_and_backward(replace(settings, max_nfe=fewest - 1))


def test_fewest_evaluations_of_scipy_are_not_claimed():
    assert SolverSettings(method="scipy_solver").fewest_evaluations() == 1
