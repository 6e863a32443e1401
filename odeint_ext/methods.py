"""Names of torchdiffeq's solvers, split by whether they choose their own step size.

torchdiffeq keeps its solver table private; these tuples restate it, and a test checks
them against the installed torchdiffeq so that a drift is caught, not silently missed.
"""

ADAPTIVE_METHODS = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver")
FIXED_GRID_METHODS = (
    "euler", "midpoint", "heun2", "heun3", "rk4",
    "explicit_adams", "implicit_adams", "fixed_adams",
)
METHODS = ADAPTIVE_METHODS + FIXED_GRID_METHODS
# torchdiffeq's own adaptive Runge-Kutta solvers: they take first_step, min_step and a norm.
RK_ADAPTIVE_METHODS = tuple(m for m in ADAPTIVE_METHODS if m != "scipy_solver")


def is_adaptive(method: str) -> bool:
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of: {', '.join(METHODS)}")
    return method in ADAPTIVE_METHODS
