"""Tests for odeint_ext: extra inputs to the dynamics, adjoint vs. direct gradients (also for
inputs computed from other adjoint parameters), NFE stats, evaluation budgets, error types (also
in the adjoint backward), autocast in the backward and the method tables. Compatibility with
torchdiffeq's own API: tests/test_odeint_compat.py.

Everything runs on CPU with tiny tensors; the one CUDA test is marked ``gpu`` and skipped when
no CUDA device is available.
"""

import copy
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from torchdiffeq._impl.odeint import SOLVERS as TORCHDIFFEQ_SOLVERS
from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver, FixedGridODESolver

from odeint_ext import (
    ADAPTIVE_METHODS,
    FIXED_GRID_METHODS,
    METHODS,
    MaxNFEExceeded,
    NonFiniteStateError,
    ODESolveError,
    SolveStats,
    is_adaptive,
    last_stats,
    odeint_adjoint_ext,
    odeint_ext as odeint_direct,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = torch.float64
SOLVE_FNS = pytest.mark.parametrize(
    "solve", [odeint_direct, odeint_adjoint_ext], ids=["direct", "adjoint"]
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def rel_err(a, b):
    """max|a - b| / max|b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


class Counting(nn.Module):
    """Counts every call that reaches the wrapped dynamics (parameters stay visible)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, t, y, **inputs):
        self.calls += 1
        return self.inner(t, y, **inputs)


class CountingFn:
    """Counting wrapper for plain-function dynamics."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, t, y, **inputs):
        self.calls += 1
        return self.fn(t, y, **inputs)


class AttentionDynamics(nn.Module):
    """dy/dt = tanh(softmax(q k^T / sqrt(d), masked) v) + 0.1 * skip(y), q = query(y).

    y: (B, T, D); keys, values: (B, S, D); key_padding_mask: (B, S) bool, True = padded.
    """

    def __init__(self, dim):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.skip = nn.Linear(dim, dim)
        self.scale = dim ** -0.5

    def forward(self, t, y, *, keys, values, key_padding_mask):
        scores = (self.query(y) * self.scale) @ keys.transpose(-1, -2)  # (B, T, S)
        scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        return torch.tanh(attn @ values) + 0.1 * self.skip(y)


class TupleAttentionDynamics(nn.Module):
    """Two-part state (y_a, y_b): y_a attends to the encoder, y_b is driven by y_a."""

    def __init__(self, dim):
        super().__init__()
        self.attn = AttentionDynamics(dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, t, y, **inputs):
        y_a, y_b = y
        d_a = self.attn(t, y_a + 0.5 * y_b, **inputs)
        d_b = torch.tanh(self.mix(y_a)) - 0.3 * y_b
        return d_a, d_b


def attention_inputs(enc, mask):
    """keys/values derived from the encoder leaf by position-wise ops: non-leaf tensors."""
    keys = 1.5 * torch.tanh(enc)
    values = 0.8 * enc + 0.2
    return dict(keys=keys, values=values, key_padding_mask=mask)


def make_attention_problem(tuple_state, device="cpu", seed=0):
    torch.manual_seed(seed)
    B, T, S, D = 2, 3, 4, 4
    func = (TupleAttentionDynamics(D) if tuple_state else AttentionDynamics(D)).to(device, F64)
    enc = torch.randn(B, S, D, dtype=F64, device=device, requires_grad=True)
    mask = torch.zeros(B, S, dtype=torch.bool, device=device)
    mask[1, -2:] = True  # the last two key positions of batch element 1 are padding
    if tuple_state:
        y0 = (
            torch.randn(B, T, D, dtype=F64, device=device, requires_grad=True),
            torch.randn(B, T, D, dtype=F64, device=device, requires_grad=True),
        )
        weights = tuple(torch.randn(3, B, T, D, dtype=F64, device=device) for _ in range(2))
    else:
        y0 = torch.randn(B, T, D, dtype=F64, device=device, requires_grad=True)
        weights = torch.randn(3, B, T, D, dtype=F64, device=device)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, device=device)
    return func, y0, enc, mask, t, weights


def attention_grads(solve, func, y0, enc, mask, t, weights, **kwargs):
    """Solve, take a weighted sum over all output times, return (solution, grads of leaves)."""
    inputs = attention_inputs(enc, mask)
    assert not inputs["keys"].is_leaf and inputs["keys"].requires_grad
    assert not inputs["values"].is_leaf and inputs["values"].requires_grad
    sol = solve(func, y0, t, inputs=inputs, **kwargs)
    if isinstance(sol, tuple):
        loss = sum((s * w).sum() for s, w in zip(sol, weights))
        y0_leaves = list(y0)
    else:
        loss = (sol * weights).sum()
        y0_leaves = [y0]
    leaves = y0_leaves + list(func.parameters()) + [enc]
    grads = torch.autograd.grad(loss, leaves)
    return sol, grads


def check_attention_adjoint_matches_direct(tuple_state, seminorm, device="cpu"):
    func, y0, enc, mask, t, weights = make_attention_problem(tuple_state, device=device)
    tol = dict(rtol=1e-10, atol=1e-10, method="dopri5")

    direct_stats = SolveStats()
    sol_d, grads_d = attention_grads(
        odeint_direct, func, y0, enc, mask, t, weights, stats=direct_stats, **tol
    )
    adjoint_stats = SolveStats()
    sol_a, grads_a = attention_grads(
        odeint_adjoint_ext, func, y0, enc, mask, t, weights,
        stats=adjoint_stats, adjoint_seminorm=seminorm, **tol
    )

    # Same forward solve, so the same solution.
    for a, b in zip(sol_a if tuple_state else (sol_a,), sol_d if tuple_state else (sol_d,)):
        assert a.device.type == torch.device(device).type
        assert rel_err(a, b) < 1e-10

    n_y0 = 2 if tuple_state else 1
    names = [f"y0[{i}]" for i in range(n_y0)] + [n for n, _ in func.named_parameters()] + ["enc"]
    assert len(names) == len(grads_a) == len(grads_d)
    for name, ga, gd in zip(names, grads_a, grads_d):
        assert gd.abs().max() > 0, name
        assert rel_err(ga, gd) < 1e-5, (name, rel_err(ga, gd))

    # Padded key positions never influence the output: zero gradient, exactly, both ways.
    g_enc_a, g_enc_d = grads_a[-1], grads_d[-1]
    for g in (g_enc_a, g_enc_d):
        assert torch.all(g[1, -2:] == 0)
        assert g[1, :-2].abs().max() > 0
        assert g[0].abs().max() > 0
    assert direct_stats.nfe_backward == 0
    assert adjoint_stats.nfe_forward > 0 and adjoint_stats.nfe_backward > 0
    return adjoint_stats


# --------------------------------------------------------------------------------------------
# 1. Attention dynamics: adjoint gradients == direct gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tuple_state, seminorm",
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["tensor", "tuple", "tensor-seminorm", "tuple-seminorm"],
)
def test_attention_adjoint_grads_match_direct(tuple_state, seminorm):
    check_attention_adjoint_matches_direct(tuple_state, seminorm)


# --------------------------------------------------------------------------------------------
# 2. gradcheck
# --------------------------------------------------------------------------------------------


def _tiny_attention():
    torch.manual_seed(1)
    func = AttentionDynamics(2).to(F64)  # batch 1, 2 tokens, dim 2
    y0 = torch.randn(1, 2, 2, dtype=F64, requires_grad=True)
    enc = torch.randn(1, 2, 2, dtype=F64, requires_grad=True)
    mask = torch.zeros(1, 2, dtype=torch.bool)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    return func, y0, enc, mask, t


@pytest.mark.parametrize(
    "method, options",
    [("dopri5", None), ("rk4", dict(step_size=0.25))],
    ids=["dopri5", "rk4"],
)
def test_gradcheck_direct(method, options):
    func, y0, enc, mask, t = _tiny_attention()

    def fn(y0, enc):
        return odeint_direct(func, y0, t, inputs=attention_inputs(enc, mask),
                             rtol=1e-10, atol=1e-10, method=method, options=options)[-1]

    assert torch.autograd.gradcheck(fn, (y0, enc), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_adjoint_rk4():
    func, y0, enc, mask, t = _tiny_attention()

    def fn(y0, enc):
        return odeint_adjoint_ext(func, y0, t, inputs=attention_inputs(enc, mask),
                                  rtol=1e-10, atol=1e-10, method="rk4",
                                  options=dict(step_size=0.25))[-1]

    # The rk4 adjoint integrates the continuous adjoint ODE backwards on the same grid, so its
    # gradient approximates the derivative of the exact flow, not of the discrete rk4 map that
    # finite differences see: the two differ by O(step_size**4) in general. These dynamics are
    # smooth enough that the difference is ~1e-10 (measured), well inside atol=1e-5.
    assert torch.autograd.gradcheck(fn, (y0, enc), eps=1e-6, atol=1e-5, rtol=1e-3)

    # The same comparison against the direct (exact-for-rk4) gradients, without finite differences.
    y0_d = y0.detach().clone().requires_grad_(True)
    enc_d = enc.detach().clone().requires_grad_(True)
    fn(y0, enc).sum().backward()
    odeint_direct(func, y0_d, t, inputs=attention_inputs(enc_d, mask), rtol=1e-10, atol=1e-10,
                  method="rk4", options=dict(step_size=0.25))[-1].sum().backward()
    for a, d in ((y0.grad, y0_d.grad), (enc.grad, enc_d.grad)):
        assert rel_err(a, d) < 1e-6


# --------------------------------------------------------------------------------------------
# 3. Non-float inputs reach func unchanged
# --------------------------------------------------------------------------------------------


class RecordingDynamics(nn.Module):
    def __init__(self):
        super().__init__()
        self.rate = nn.Parameter(torch.tensor([0.3, -0.2, 0.5], dtype=F64))
        self.seen = []

    def forward(self, t, y, *, mask, idx, nothing, count, name, config):
        self.seen.append(dict(mask=mask, idx=idx, nothing=nothing, count=count, name=name,
                              config=config, mask_dtype=mask.dtype,
                              mask_requires_grad=mask.requires_grad))
        assert nothing is None and name == "decoder"
        keep = (~mask).to(y.dtype)  # (2, 3)
        return -self.rate[idx][:, None] * y * keep * config["scale"] / count


@SOLVE_FNS
def test_non_float_inputs_pass_through_unchanged(solve):
    torch.manual_seed(0)
    func = RecordingDynamics()
    mask = torch.tensor([[False, True, False], [False, False, True]])
    mask_before = mask.clone()
    idx = torch.tensor([2, 0], dtype=torch.long)
    config = {"scale": 1.5, "nested": [1, 2]}
    config_before = copy.deepcopy(config)
    count, name = 2, "decoder"
    inputs = dict(mask=mask, idx=idx, nothing=None, count=count, name=name, config=config)
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)

    sol = solve(func, y0, [0.0, 1.0], inputs=inputs, rtol=1e-7, atol=1e-9)
    n_forward = len(func.seen)
    sol[-1].sum().backward()

    assert n_forward > 0
    if solve is odeint_adjoint_ext:
        assert len(func.seen) > n_forward  # the adjoint backward evaluated func as well
    else:
        assert len(func.seen) == n_forward
    for rec in func.seen:
        assert rec["mask"] is mask and rec["idx"] is idx and rec["config"] is config
        assert rec["nothing"] is None and rec["count"] == 2 and rec["name"] == "decoder"
        assert rec["mask_dtype"] == torch.bool and not rec["mask_requires_grad"]
    # Nothing was modified in place or given a grad.
    assert mask.dtype == torch.bool and torch.equal(mask, mask_before)
    assert not mask.requires_grad and mask.grad is None
    assert idx.dtype == torch.long and torch.equal(idx, torch.tensor([2, 0]))
    assert config == config_before
    assert inputs["mask"] is mask  # the caller's dict is left alone too

    # The masked entries did not move (up to the interpolant's rounding); grads reached y0 and
    # the parameter.
    assert torch.allclose(sol[-1][mask], y0.detach()[mask], rtol=1e-12, atol=0)
    expected = y0.detach() * torch.exp(-func.rate.detach()[idx][:, None] * 1.5 / 2 * (~mask))
    assert rel_err(sol[-1].detach(), expected) < 1e-5
    assert y0.grad is not None and func.rate.grad is not None
    assert func.rate.grad[1] == 0  # rate[1] is never indexed by idx
    assert func.rate.grad[0] != 0 and func.rate.grad[2] != 0


# --------------------------------------------------------------------------------------------
# 4. Evaluation budgets
# --------------------------------------------------------------------------------------------


def stiff(t, y):
    return -1e6 * (y - torch.cos(t))


@SOLVE_FNS
def test_max_nfe_stops_a_stiff_forward_quickly(solve):
    max_nfe = 300
    counted = CountingFn(stiff)
    stats = SolveStats()
    y0 = torch.zeros(1, dtype=F64)
    start = time.perf_counter()
    with pytest.raises(MaxNFEExceeded) as info:
        solve(counted, y0, [0.0, 1.0], rtol=1e-8, atol=1e-8, method="dopri5",
              max_nfe=max_nfe, stats=stats)
    elapsed = time.perf_counter() - start

    err = info.value
    assert isinstance(err, RuntimeError) and isinstance(err, ODESolveError)
    assert issubclass(MaxNFEExceeded, RuntimeError)
    # The (max_nfe+1)-th evaluation was attempted and refused before func ran: func itself ran
    # exactly max_nfe times, and the stats / the error count the refused attempt.
    assert counted.calls == max_nfe
    assert err.nfe == max_nfe + 1 == stats.nfe_forward
    assert err.limit == max_nfe and err.phase == "forward"
    assert 0.0 < err.t < 1e-2  # the stiff problem crawls: far from t=1
    msg = str(err)
    assert f"NFE {max_nfe + 1}" in msg and str(max_nfe) in msg and "t=" in msg
    assert "forward" in msg
    assert elapsed < 5.0


def test_max_nfe_bounds_the_adjoint_backward():
    torch.manual_seed(0)
    func = nn.Sequential(nn.Linear(3, 3), nn.Tanh()).to(F64)
    dyn = lambda: Counting(_SeqDyn(func))  # noqa: E731
    y0 = torch.randn(3, dtype=F64, requires_grad=True)
    kw = dict(rtol=1e-3, atol=1e-3, adjoint_rtol=1e-11, adjoint_atol=1e-11, method="dopri5")

    # Unbudgeted run: the loose forward is cheap, the tight backward is not.
    free = SolveStats()
    odeint_adjoint_ext(dyn(), y0, [0.0, 2.0], stats=free, **kw)[-1].sum().backward()
    assert free.nfe_backward > free.nfe_forward > 0

    # A budget that the forward fits exactly: the forward succeeds, the backward raises.
    budget = free.nfe_forward
    stats = SolveStats()
    counted = dyn()
    sol = odeint_adjoint_ext(counted, y0, [0.0, 2.0], stats=stats, max_nfe=budget, **kw)
    assert stats.nfe_forward == budget == counted.calls
    with pytest.raises(MaxNFEExceeded) as info:
        sol[-1].sum().backward()
    err = info.value
    assert err.phase == "backward" and err.limit == budget and err.nfe == budget + 1
    assert "backward" in str(err) and f"NFE {budget + 1}" in str(err)
    assert stats.nfe_backward == budget + 1
    assert counted.calls == 2 * budget  # each phase ran func exactly `budget` times


class _SeqDyn(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y) - 0.5 * y


_OPTIMIZED_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from odeint_ext import MaxNFEExceeded, ODESolveError, odeint_ext
    print("DEBUG", __debug__)
    y0 = torch.zeros(1, dtype=torch.float64)
    start = time.perf_counter()
    try:
        odeint_ext(lambda t, y: -1e6 * (y - torch.cos(t)), y0, [0.0, 1.0],
                   rtol=1e-8, atol=1e-8, method="dopri5", max_nfe=300)
    except MaxNFEExceeded as e:
        print("STIFF", type(e).__name__, e.nfe, e.limit, e.phase, round(time.perf_counter() - start, 3))
    else:
        print("STIFF not raised")
        sys.exit(1)
    # NaN dynamics: with asserts stripped torchdiffeq no longer stops on a NaN step size;
    # the budget still ends the solve.
    try:
        odeint_ext(lambda t, y: y * float("nan") if t > 0.5 else -y, y0 + 1, [0.0, 1.0],
                   rtol=1e-6, atol=1e-6, method="dopri5", max_nfe=300)
    except ODESolveError as e:
        print("NAN", type(e).__name__)
    else:
        print("NAN not raised")
        sys.exit(1)
    """
)


def test_max_nfe_raises_under_python_O():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-O", "-c", _OPTIMIZED_SCRIPT],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "DEBUG False" in proc.stdout, out  # asserts really were stripped
    assert "STIFF MaxNFEExceeded 301 300 forward" in proc.stdout, out
    stiff_secs = float(proc.stdout.split("STIFF MaxNFEExceeded 301 300 forward")[1].split()[0])
    assert stiff_secs < 5.0, out
    assert "NAN " in proc.stdout and "NAN not raised" not in proc.stdout, out


# --------------------------------------------------------------------------------------------
# 5. NFE accounting matches a counting wrapper, for every method
# --------------------------------------------------------------------------------------------


class Decay(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([-0.4, -0.9], dtype=F64))

    def forward(self, t, y):
        return self.k * y


NON_SCIPY_METHODS = [m for m in METHODS if m != "scipy_solver"]


@pytest.mark.parametrize("method", NON_SCIPY_METHODS)
@SOLVE_FNS
def test_nfe_stats_match_counting_wrapper(method, solve):
    counted = Counting(Decay())
    k = counted.inner.k
    y0 = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    options = None if is_adaptive(method) else dict(step_size=0.25)
    stats = SolveStats()

    sol = solve(counted, y0, t, rtol=1e-6, atol=1e-6, method=method, options=options, stats=stats)
    assert last_stats() is stats
    n_forward = counted.calls
    assert n_forward > 0
    assert stats.nfe_forward == n_forward and stats.nfe_backward == 0

    # Loose: the fixed grids take only four steps of 0.25, so low orders are far off.
    tol = 1e-3 if is_adaptive(method) else {"euler": 0.25, "midpoint": 0.05, "heun2": 0.05}.get(method, 1e-2)
    exact = y0.detach() * torch.exp(k.detach() * t[:, None])
    assert rel_err(sol.detach(), exact) < tol

    (sol[1] + sol[2]).sum().backward()
    if solve is odeint_adjoint_ext:
        assert stats.nfe_backward > 0
        assert counted.calls - n_forward == stats.nfe_backward
    else:
        assert counted.calls == n_forward and stats.nfe_backward == 0
    assert stats.nfe_forward == n_forward  # the backward did not count as forward work

    kd, y0d = k.detach(), y0.detach()
    exact_dy0 = torch.exp(0.5 * kd) + torch.exp(kd)
    exact_dk = y0d * (0.5 * torch.exp(0.5 * kd) + torch.exp(kd))
    assert rel_err(y0.grad, exact_dy0) < tol
    assert rel_err(k.grad, exact_dk) < tol


@SOLVE_FNS
def test_last_stats_without_stats_argument(solve):
    previous = SolveStats()
    solve(lambda t, y: -y, torch.ones(2, dtype=F64), [0.0, 1.0], rtol=1e-6, atol=1e-6,
          stats=previous)
    assert last_stats() is previous
    counted = CountingFn(lambda t, y: -y)
    solve(counted, torch.ones(2, dtype=F64), [0.0, 1.0], rtol=1e-6, atol=1e-6)
    stats = last_stats()
    assert isinstance(stats, SolveStats) and stats is not previous
    assert stats.nfe_forward == counted.calls > 0 and stats.nfe_backward == 0
    assert isinstance(stats.t_last, torch.Tensor)  # dopri5 may overshoot t=1, so no bound


# --------------------------------------------------------------------------------------------
# 6. Non-finite states raise ODESolveError, without hanging
# --------------------------------------------------------------------------------------------


def nan_after_half(t, y):
    return y * float("nan") if t > 0.5 else -y


def blow_up(t, y):
    return y ** 2  # y(0)=1: y = 1/(1-t), singular at t=1


@pytest.mark.parametrize("dynamics", [nan_after_half, blow_up], ids=["nan", "blowup"])
@pytest.mark.parametrize(
    "method, options", [("dopri5", None), ("rk4", dict(step_size=0.25))], ids=["dopri5", "rk4"]
)
@SOLVE_FNS
def test_non_finite_state_raises(dynamics, method, options, solve):
    y0 = torch.ones(2, dtype=F64)
    start = time.perf_counter()
    with pytest.raises(ODESolveError) as info:
        solve(dynamics, y0, [0.0, 2.0], rtol=1e-6, atol=1e-6, method=method, options=options,
              max_nfe=3000)
    assert time.perf_counter() - start < 5.0
    assert isinstance(info.value, RuntimeError)
    if method == "rk4":
        # A fixed grid never gives up: the NaN/Inf reaches the solution and our check sees it.
        assert isinstance(info.value, NonFiniteStateError)
        assert "NaN or Inf" in str(info.value)
    assert issubclass(NonFiniteStateError, ODESolveError)


# --------------------------------------------------------------------------------------------
# 7. Method tables and argument validation
# --------------------------------------------------------------------------------------------


def test_method_tables_match_torchdiffeq():
    assert len(METHODS) == len(set(METHODS))
    assert not set(ADAPTIVE_METHODS) & set(FIXED_GRID_METHODS)
    assert set(METHODS) == set(ADAPTIVE_METHODS) | set(FIXED_GRID_METHODS)
    assert set(METHODS) == set(TORCHDIFFEQ_SOLVERS)
    for name, cls in TORCHDIFFEQ_SOLVERS.items():
        if name == "scipy_solver":
            # ScipyWrapperODESolver subclasses neither torchdiffeq base class: it hands the whole
            # solve to scipy's solve_ivp, which picks its own steps from rtol/atol.
            assert not issubclass(cls, FixedGridODESolver)
            assert is_adaptive(name)
            continue
        assert is_adaptive(name) == issubclass(cls, AdaptiveStepsizeODESolver), name
        assert (name in FIXED_GRID_METHODS) == issubclass(cls, FixedGridODESolver), name


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(method="rk45"), r"unknown ODE method 'rk45'"),
        (dict(rtol=0.0, atol=0.0), r"rtol and atol must be >= 0 and not both 0.*rtol=0\.0, atol=0\.0"),
        (dict(rtol=-1e-6), r"rtol and atol must be >= 0.*rtol=-1e-06"),
        (dict(atol=-1.0), r"rtol and atol must be >= 0.*atol=-1\.0"),
        (dict(atol=(1e-6, -1e-6)), r"rtol and atol must be >= 0"),
        (dict(max_nfe=0), r"max_nfe must be >= 1"),
    ],
    ids=["unknown-method", "both-zero", "rtol-negative", "atol-negative", "atol-tuple-negative", "max-nfe-zero"],
)
@SOLVE_FNS
def test_invalid_arguments_raise_value_error(kwargs, pattern, solve):
    counted = CountingFn(lambda t, y: -y)
    args = dict(rtol=1e-6, atol=1e-6)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        solve(counted, torch.ones(2, dtype=F64), [0.0, 1.0], **args)
    assert counted.calls == 0


def test_is_adaptive_and_seminorm_validation():
    with pytest.raises(ValueError, match="unknown ODE method 'nope'"):
        is_adaptive("nope")
    assert is_adaptive("dopri5") and not is_adaptive("rk4")
    with pytest.raises(ValueError, match="adjoint_seminorm needs an adaptive adjoint_method"):
        odeint_adjoint_ext(lambda t, y: -y, torch.ones(1, dtype=F64), [0.0, 1.0], rtol=1e-6,
                           atol=1e-6, method="rk4", options=dict(step_size=0.25),
                           adjoint_seminorm=True)


# --------------------------------------------------------------------------------------------
# Failures inside the adjoint backward (issue #10 b)
# --------------------------------------------------------------------------------------------


def where_sqrt(t, y):
    # Finite values, NaN vector-Jacobian product (torch.where's untaken sqrt branch).
    return torch.where(y > 100, torch.sqrt(y - 100), -y)


def test_backward_solve_failure_raises_odesolveerror():
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    sol = odeint_adjoint_ext(where_sqrt, y0, [0.0, 1.0], rtol=1e-6, atol=1e-6, max_nfe=1000)
    assert torch.isfinite(sol).all()  # the forward is fine
    with pytest.raises(ODESolveError, match="adjoint backward solve") as info:
        sol[-1].sum().backward()
    assert not isinstance(info.value, MaxNFEExceeded)
    assert isinstance(info.value.__cause__, AssertionError)  # torchdiffeq's guard, kept as the cause


def test_backward_max_num_steps_raises_odesolveerror():
    """torchdiffeq's step guard in the backward solve: ODESolveError naming it, from .backward()."""
    torch.manual_seed(0)
    func = _SeqDyn(nn.Sequential(nn.Linear(3, 3), nn.Tanh()).to(F64))
    y0 = torch.randn(3, dtype=F64, requires_grad=True)
    sol = odeint_adjoint_ext(func, y0, [0.0, 2.0], rtol=1e-3, atol=1e-3, adjoint_rtol=1e-10,
                             adjoint_atol=1e-10, adjoint_options=dict(max_num_steps=3))
    with pytest.raises(ODESolveError, match="adjoint backward solve.*max_num_steps exceeded"):
        sol[-1].sum().backward()
    assert y0.grad is None


class AssertingDynamics(nn.Module):
    """func's own assert, failing in one phase: torchdiffeq's adjoint solves the forward without
    grad and evaluates the backward with it."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(-0.5, dtype=F64))
        self.fail_in = None

    def forward(self, t, y):
        phase = "backward" if torch.is_grad_enabled() else "forward"
        assert phase != self.fail_in, f"func's own check ({phase})"
        return self.k * y


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_funcs_own_assertion_is_not_called_a_solver_failure(phase):
    func = AssertingDynamics()
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    sol = odeint_adjoint_ext(func, y0, [0.0, 1.0])
    func.fail_in = phase
    with pytest.raises(AssertionError, match=f"func's own check \\({phase}\\)"):
        if phase == "forward":
            odeint_adjoint_ext(func, y0, [0.0, 1.0])
        else:
            sol[-1].sum().backward()


# --------------------------------------------------------------------------------------------
# Inputs computed from other adjoint parameters (issue #10 a)
# --------------------------------------------------------------------------------------------


class KeyedDynamics(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(3, 3, dtype=F64) * 0.5)

    def forward(self, t, y, *, k, m, x, pair):
        return torch.tanh(self.W @ y + k) - 0.2 * y + 0.1 * m * pair[1] + 0.05 * torch.sin(x * y)


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", dict(step_size=0.1))],
                         ids=["dopri5", "rk4"])
def test_inputs_computed_from_adjoint_parameters_get_the_chain_rule_once(method, options):
    """k = W @ x with W a parameter of func, m from another input x, a scale inside a tuple
    computed from W too: the adjoint's gradients equal direct backprop's. (Before the fix the
    adjoint counted the path k -> W twice: dW was off by 0.79 here.)"""
    torch.manual_seed(0)
    func = KeyedDynamics()
    x = torch.randn(3, dtype=F64, requires_grad=True)
    y0 = torch.randn(3, dtype=F64, requires_grad=True)
    leaves = [func.W, x, y0]
    grads = {}
    for solve in (odeint_direct, odeint_adjoint_ext):
        inputs = dict(k=func.W @ x, m=x * 2, x=x, pair=("scale", func.W.sum() * 0.1))
        sol = solve(func, y0, [0.0, 0.5, 1.0], inputs=inputs, rtol=1e-10, atol=1e-10,
                    method=method, options=options)
        grads[solve] = torch.autograd.grad((sol[1:] * torch.tensor([0.7, 1.3], dtype=F64)[:, None]).sum(),
                                           leaves)
    # rk4: the adjoint integrates the continuous adjoint on the grid, direct backprop
    # differentiates the discrete map; they differ by O(h^4) (~1e-7 measured).
    tol = 1e-7 if method == "dopri5" else 1e-6
    for name, a, d in zip(["W", "x", "y0"], grads[odeint_adjoint_ext], grads[odeint_direct]):
        assert d.abs().max() > 0, name
        assert rel_err(a, d) < tol, (name, rel_err(a, d))


def test_inputs_keep_their_containers_and_tensors_reach_func_as_values():
    """The adjoint hands func aliases of grad-requiring input tensors (same values); containers
    holding none are passed as they are."""
    seen = []

    def f(t, y, *, k, cfg, nested):
        seen.append((k, cfg, nested))
        return -k * y * nested["w"][0]

    k = torch.tensor([0.5, 0.2], dtype=F64, requires_grad=True)
    w = torch.tensor([1.5], dtype=F64, requires_grad=True)
    cfg = {"a": [1, 2]}
    nested = {"w": (w * 1.0,)}
    sol = odeint_adjoint_ext(f, torch.ones(2, dtype=F64), [0.0, 1.0],
                             inputs=dict(k=k, cfg=cfg, nested=nested), rtol=1e-9, atol=1e-9)
    sol[-1].sum().backward()
    for k_seen, cfg_seen, nested_seen in seen:
        assert cfg_seen is cfg and torch.equal(k_seen, k) and type(nested_seen["w"]) is tuple
        assert torch.equal(nested_seen["w"][0], w)
    exact = -torch.exp(-k.detach() * 1.5) * 1.5  # d/dk of exp(-1.5 k)
    assert rel_err(k.grad, exact) < 1e-6 and w.grad is not None


# --------------------------------------------------------------------------------------------
# Autocast: the adjoint backward evaluates func in the solve's autocast state (issue #10 c)
# --------------------------------------------------------------------------------------------


class AutocastProbe(nn.Module):
    """dy/dt = -y * (W @ x): W @ x runs in bf16 under autocast. W's entry 1.0039 is not a bf16
    number (neighbours 1.0 and 1.0078), so the two regimes integrate different rates."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[1.0039, 0.0], [0.0, 0.6016]]))
        self.seen = []

    def forward(self, t, y, *, x):
        rate = self.W @ x
        device = y.device.type
        self.seen.append((torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), rate.dtype))
        return -y * rate


def _autocast_solve(solve, autocast_forward, autocast_backward, device="cpu"):
    func = AutocastProbe().to(device)
    x = torch.ones(2, device=device, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], device=device, requires_grad=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast_forward):
        sol = solve(func, y0, [0.0, 1.0], inputs={"x": x}, method="rk4", options=dict(step_size=0.05))
    n_forward = len(func.seen)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast_backward):
        sol[-1].sum().backward()
    return func.seen[:n_forward], func.seen[n_forward:], y0.grad


def check_autocast_regime(autocast_forward, device):
    forward, backward, grad = _autocast_solve(odeint_adjoint_ext, autocast_forward,
                                              not autocast_forward, device)
    regime = (True, torch.bfloat16, torch.bfloat16) if autocast_forward else (False,)
    assert forward and backward
    for rec in forward + backward:
        assert rec[:len(regime)] == regime, rec
        if not autocast_forward:
            assert rec[2] == torch.float32
    # Same dynamics as direct backprop through the same solve: the gradients agree to the
    # solver's accuracy (rk4, h=0.05), far below the ~0.3% the regimes' gradients differ by.
    _, _, direct = _autocast_solve(odeint_direct, autocast_forward, not autocast_forward, device)
    assert rel_err(grad, direct) < 1e-5, rel_err(grad, direct)
    _, _, other = _autocast_solve(odeint_direct, not autocast_forward, autocast_forward, device)
    assert rel_err(other, direct) > 1e-3  # the check above can tell the regimes apart


@pytest.mark.parametrize("autocast_forward", [True, False], ids=["bf16-forward", "fp32-forward"])
def test_adjoint_backward_reenters_the_forward_autocast_state(autocast_forward):
    """Forward under bf16 autocast, backward outside it; or the reverse."""
    check_autocast_regime(autocast_forward, "cpu")


def test_max_nfe_exceeded_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(MaxNFEExceeded(11, 0.5, 10, "backward")))
    assert isinstance(err, MaxNFEExceeded) and err.nfe == 11 and err.phase == "backward"


# --------------------------------------------------------------------------------------------
# 8. CUDA
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_attention_adjoint_and_nfe():
    check_attention_adjoint_matches_direct(tuple_state=False, seminorm=False, device="cuda")

    func, y0, enc, mask, t, weights = make_attention_problem(False, device="cuda")
    counted = Counting(func)
    stats = SolveStats()
    sol = odeint_adjoint_ext(counted, y0, t, inputs=attention_inputs(enc, mask),
                             rtol=1e-7, atol=1e-9, stats=stats)
    assert sol.is_cuda and stats.t_last.is_cuda
    n_forward = counted.calls
    assert stats.nfe_forward == n_forward > 0
    (sol * weights).sum().backward()
    assert stats.nfe_backward == counted.calls - n_forward > 0
    assert enc.grad.is_cuda and torch.all(enc.grad[1, -2:] == 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast_forward", [True, False], ids=["bf16-forward", "fp32-forward"])
def test_cuda_autocast_state_in_the_backward(autocast_forward):
    # CUDA backward nodes run on autograd's device thread: the state must travel with the solve.
    check_autocast_regime(autocast_forward, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backward_errors_keep_their_types():
    y0 = torch.ones(2, dtype=F64, device="cuda", requires_grad=True)
    sol = odeint_adjoint_ext(where_sqrt, y0, [0.0, 1.0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ODESolveError, match="adjoint backward solve"):
        sol[-1].sum().backward()
    torch.manual_seed(0)  # forward ~20 NFE, backward > 200 (measured on CPU for seeds 0-2)
    func = _SeqDyn(nn.Sequential(nn.Linear(3, 3), nn.Tanh())).to("cuda", F64)
    y0 = torch.randn(3, dtype=F64, device="cuda", requires_grad=True)
    stats = SolveStats()
    sol = odeint_adjoint_ext(func, y0, [0.0, 2.0], rtol=1e-3, atol=1e-3, adjoint_rtol=1e-11,
                             adjoint_atol=1e-11, stats=stats, max_nfe=60)
    with pytest.raises(MaxNFEExceeded) as info:
        sol[-1].sum().backward()
    assert info.value.phase == "backward" and stats.nfe_backward == 61


def test_each_backward_pass_has_its_own_budget():
    f = lambda t, y: -y  # noqa: E731
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    stats = SolveStats()
    sol = odeint_adjoint_ext(f, y0, [0.0, 1.0], rtol=1e-6, atol=1e-6, stats=stats)
    sol[-1].sum().backward(retain_graph=True)
    one_pass = stats.nfe_backward
    assert one_pass > 0
    y0.grad = None
    sol = odeint_adjoint_ext(f, y0, [0.0, 1.0], rtol=1e-6, atol=1e-6, max_nfe=one_pass + 2)
    sol[-1].sum().backward(retain_graph=True)
    first = y0.grad.clone()
    sol[-1].sum().backward()  # a second pass within the same per-pass budget
    torch.testing.assert_close(y0.grad, 2 * first)


def test_backward_frees_the_adjoint_graph_like_torchdiffeq():
    """The nested adjoint graph is released by a backward without retain_graph: a second one
    fails as with any freed graph (and as with torchdiffeq's own odeint_adjoint)."""
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    sol = odeint_adjoint_ext(lambda t, y: -y, y0, [0.0, 1.0], rtol=1e-6, atol=1e-6)
    sol[-1].sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        sol[-1].sum().backward()
