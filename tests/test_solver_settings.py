"""odeint_ext.SolverSettings: one checked value for a solve, and the flags that make it."""

import pytest
import torch

from odeint_ext import RK_ADAPTIVE_METHODS, SettingsError, SolverSettings, SolveStats, odeint_ext


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
