"""How to solve, as one value: method, tolerances, times, steps, budget, backprop, adjoint options.

In the spirit of diffrax's separate ``solver`` / ``stepsize_controller`` / ``adjoint`` values: a
caller builds one :class:`SolverSettings` (checked once, when it is made, with an error that
names the field) and hands it around; :meth:`SolverSettings.solve` runs :func:`odeint_ext` or
:func:`odeint_adjoint_ext` with it. Which options each method takes is known here, not by
callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .error_estimate import ERROR_ESTIMATES
from .methods import (ERROR_ESTIMATE_METHODS, FIXED_GRID_METHODS, METHODS, RK_ADAPTIVE_METHODS, RK_STAGES,
                      STEP_GROWTH, fixed_grid_evaluations, is_adaptive)
from .solve import SolveStats, odeint_adjoint_ext, odeint_ext

BACKPROPS = ("adjoint", "direct")


class SettingsError(ValueError):
    """A SolverSettings that cannot work.

    Its message names the fields (``rtol must be > 0, got 0``); :meth:`naming` words the same
    message with the caller's names for them (``--node-rtol must be > 0, got 0``).
    """

    def __init__(self, template: str):
        self.template = template  # field names as {field}; braces of values doubled
        super().__init__(self.naming(lambda field: field))

    def naming(self, name_of: Callable[[str], str]) -> str:
        return self.template.format_map({f.name: name_of(f.name) for f in fields(SolverSettings)})


def _v(value: Any) -> str:
    """A value inside an error template."""
    return str(value).replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class SolverSettings:
    """Everything about one solve but the dynamics and the initial state.

    ``ts``: increasing times (the solution is returned at each). ``steps``: fixed-grid methods,
    steps over the whole interval (default: the ``ts`` grid). ``max_num_steps``, ``first_step``,
    ``min_step``: adaptive methods (the last two: torchdiffeq's Runge-Kutta ones). ``max_nfe``:
    evaluation budget of the forward solve and of each backward pass (None: unbounded).
    ``backprop``: "adjoint" (memory flat in the steps) or "direct" (through the solver's
    operations). ``seminorm``: the adjoint backward's error norm leaves out the parameter
    channels (Kidger et al. 2021). The defaults are the NODE-Transformer's (dopri5 at 1e-2: a
    Transformer layer's flow is smooth); tolerances must each be > 0.
    """

    method: str = "dopri5"
    rtol: float = 1e-2
    atol: float = 1e-2
    ts: Tuple[float, ...] = (0.0, 1.0)
    max_num_steps: Optional[int] = None
    max_nfe: Optional[int] = None
    backprop: str = "adjoint"
    steps: Optional[int] = None
    first_step: Optional[float] = None
    min_step: Optional[float] = None
    seminorm: bool = False

    def __post_init__(self):
        object.__setattr__(self, "ts", tuple(float(t) for t in self.ts))
        self._check()

    def _check(self) -> None:
        m = self.method
        if m not in METHODS:
            raise SettingsError(f"{{method}} {_v(repr(m))} is unknown; choose one of: {', '.join(METHODS)}")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not value > 0:
                raise SettingsError(f"{{{name}}} must be > 0, got {_v(value)}")
        if self.backprop not in BACKPROPS:
            raise SettingsError(f"{{backprop}} must be adjoint or direct, got {_v(repr(self.backprop))}")
        for name in ("max_num_steps", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{{{name}}} must be >= 1, got {_v(value)}")
        if self.max_nfe is not None and self.max_nfe < 1:
            raise SettingsError(f"{{max_nfe}} must be >= 1 or None (unbounded), got {_v(self.max_nfe)}")
        ts = self.ts
        if len(ts) < 2 or any(b <= a for a, b in zip(ts, ts[1:])) or not all(map(math.isfinite, ts)):
            raise SettingsError(f"{{ts}} must be at least two strictly increasing times, got {_v(ts)}")
        if self.steps is not None and is_adaptive(m):
            raise SettingsError(f"{{steps}} applies to fixed-grid methods; {{method}} {_v(m)} "
                                "chooses its own steps")
        if self.max_num_steps is not None and m in FIXED_GRID_METHODS:
            raise SettingsError(f"{{max_num_steps}} applies to adaptive methods; {{method}} {_v(m)} "
                                "takes a fixed number of steps ({steps})")
        if m == "scipy_solver" and self.backprop == "direct":
            raise SettingsError("{method} scipy_solver cannot backpropagate through its steps "
                                "(scipy is outside autograd): use {backprop} adjoint")
        rk = m in RK_ADAPTIVE_METHODS
        for name, low in (("first_step", "> 0"), ("min_step", ">= 0")):
            value = getattr(self, name)
            if value is None:
                continue
            if not (value > 0 if low == "> 0" else value >= 0):
                raise SettingsError(f"{{{name}}} must be {low}, got {_v(value)}")
            if not rk:
                raise SettingsError(f"{{{name}}} needs an adaptive Runge-Kutta {{method}} "
                                    f"({', '.join(RK_ADAPTIVE_METHODS)}), got {_v(repr(m))}")
        if self.seminorm and (self.backprop != "adjoint" or not rk):
            raise SettingsError("{seminorm} needs {backprop} adjoint and an adaptive Runge-Kutta "
                                f"{{method}}, got {_v(self.backprop)} / {_v(m)}")

    @property
    def takes_norm(self) -> bool:
        """Whether the method's step-size controller takes an error norm (options["norm"])."""
        return self.method in RK_ADAPTIVE_METHODS

    def options(self, norm: Optional[Callable] = None) -> Optional[dict]:
        """torchdiffeq's ``options`` of this method; ``norm`` goes in where the method takes one."""
        if is_adaptive(self.method):
            opts = {"max_num_steps": self.max_num_steps, "first_step": self.first_step,
                    "min_step": self.min_step}
            opts = {k: v for k, v in opts.items() if v}
            if norm is not None and self.takes_norm:
                opts["norm"] = norm
            return opts or None
        if self.steps:
            return {"step_size": (self.ts[-1] - self.ts[0]) / self.steps}
        return None  # the grid is ts itself

    def fewest_evaluations(self) -> int:
        """The fewest evaluations of the dynamics a solve with these settings makes, whatever
        the dynamics: the forward solve and, under the adjoint, the backward pass (one solve
        per interval of ``ts``, each starting afresh). A ``max_nfe`` below it fails every
        solve. Fixed grids: evaluations per step x steps. torchdiffeq's adaptive Runge-Kutta
        methods: the evaluation at the start, its first-step guess (a second one, unless
        ``first_step`` is given) and one step's stages (more steps when ``first_step`` is too
        small to reach the end, steps growing at most tenfold). scipy_solver: scipy decides (1).
        """
        ts = self.ts
        intervals = [b - a for a, b in zip(ts, ts[1:])]
        if self.method in FIXED_GRID_METHODS:
            forward = fixed_grid_evaluations(self.method, self.steps or len(intervals))
            step = (ts[-1] - ts[0]) / self.steps if self.steps else None
            # the adjoint solves each interval on its own, on a grid of the same step size
            per_interval = [1 if step is None else max(1, math.ceil(span / step - 1e-6))
                            for span in intervals]
            backward = sum(fixed_grid_evaluations(self.method, n) for n in per_interval)
        elif self.method in RK_ADAPTIVE_METHODS:
            forward = self._fewest_adaptive(ts[-1] - ts[0])
            backward = sum(self._fewest_adaptive(span) for span in intervals)
        else:
            return 1
        return max(forward, backward) if self.backprop == "adjoint" else forward

    def _fewest_adaptive(self, span: float) -> int:
        """An adaptive Runge-Kutta solve over ``span``: its fewest steps come when every step
        is accepted with no error (the step then grows by STEP_GROWTH)."""
        steps = 1
        if self.first_step is not None:
            dt, covered, steps = max(self.first_step, self.min_step or 0.0), 0.0, 0
            while covered < span * (1 - 1e-9):
                covered, dt, steps = covered + dt, dt * STEP_GROWTH, steps + 1
        start = 1 if self.first_step is not None else 2
        return start + RK_STAGES[self.method] * steps

    def fixed_step(self, steps: int, method: str = "rk4") -> "SolverSettings":
        """The same solve on a grid of ``steps`` steps of a fixed-grid ``method``, without a
        budget (it cannot hang) and without the adaptive methods' options."""
        if method not in FIXED_GRID_METHODS:
            raise SettingsError(f"{{method}} {_v(repr(method))} is not a fixed-grid method "
                                f"({', '.join(FIXED_GRID_METHODS)})")
        return replace(self, method=method, steps=steps, max_nfe=None, first_step=None,
                       min_step=None, max_num_steps=None, seminorm=False)

    def check_error_estimate(self, error_estimate: Optional[str]) -> None:
        """SettingsError unless solves with these settings can give ``error_estimate`` (None,
        "global" or "local"; see odeint_ext.error_estimate): an embedded-pair method, and
        "global" only with direct backprop, whether or not a given solve needs gradients."""
        if error_estimate is None:
            return
        if error_estimate not in ERROR_ESTIMATES:
            raise SettingsError(f"error_estimate must be None, global or local, got {_v(repr(error_estimate))}")
        if self.method not in ERROR_ESTIMATE_METHODS:
            raise SettingsError(f"error_estimate {_v(error_estimate)} needs a {{method}} with an embedded "
                                f"error estimate ({', '.join(ERROR_ESTIMATE_METHODS)}), got {_v(repr(self.method))}")
        if error_estimate == "global" and self.backprop != "direct":
            raise SettingsError("error_estimate global needs {backprop} direct: the adjoint's forward "
                                "solve keeps no graph to read it from; use error_estimate local")

    def solve(self, func: Callable, y0, t: Optional[torch.Tensor] = None, *,
              inputs: Optional[Dict[str, Any]] = None, stats: Optional[SolveStats] = None,
              norm: Optional[Callable] = None, enforce_budget: bool = True,
              error_estimate: Optional[str] = None):
        """Solve with these settings: the adjoint when ``backprop`` is "adjoint" and gradients
        are needed, else directly (evaluation needs no backward). ``t`` (default ``ts``) lets a
        caller move the times, as STEER does. ``enforce_budget=False``: ``func`` enforces
        ``max_nfe`` itself, in its own way. ``error_estimate``: see :meth:`check_error_estimate`;
        the estimate goes to ``stats.local_error``."""
        self.check_error_estimate(error_estimate)
        t = self.ts if t is None else t
        kwargs = dict(rtol=self.rtol, atol=self.atol, method=self.method,
                      options=self.options(norm), stats=stats, inputs=inputs,
                      max_nfe=self.max_nfe if enforce_budget else None, error_estimate=error_estimate)
        if self.backprop == "adjoint" and torch.is_grad_enabled():
            return odeint_adjoint_ext(func, y0, t, adjoint_seminorm=self.seminorm, **kwargs)
        return odeint_ext(func, y0, t, **kwargs)
