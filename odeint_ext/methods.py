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
# Methods whose step carries an embedded error estimate (a second, lower-order solution from the
# same stages): torchdiffeq's adaptive Runge-Kutta ones. scipy's controller is out of reach.
ERROR_ESTIMATE_METHODS = RK_ADAPTIVE_METHODS


def is_adaptive(method: str) -> bool:
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of: {', '.join(METHODS)}")
    return method in ADAPTIVE_METHODS

# Evaluations of the dynamics per step of torchdiffeq's Runge-Kutta methods. The adaptive
# ones evaluate their tableau's stages after the first, which is the previous step's last
# (first same as last); the first step's comes from the evaluation at t0.
RK_STAGES = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4,
             "dopri8": 13, "dopri5": 6, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 1}
# torchdiffeq's Adams methods start with rk4 steps until they hold a history of 3 (2 steps);
# then explicit_adams makes 1 evaluation a step, the implicit ones at least 2 (predictor, one
# corrector iteration: more when it has not converged).
ADAMS_START_STEPS = 2
ADAMS_STEP = {"explicit_adams": 1, "implicit_adams": 2, "fixed_adams": 2}
# Adaptive steps grow by at most this factor (torchdiffeq's default ifactor).
STEP_GROWTH = 10.0


def fixed_grid_evaluations(method: str, steps: int) -> int:
    """Evaluations a fixed-grid solve of ``steps`` steps makes (the fewest, for the implicit
    Adams methods)."""
    if method in ADAMS_STEP:
        start = min(steps, ADAMS_START_STEPS)
        return RK_STAGES["rk4"] * start + ADAMS_STEP[method] * (steps - start)
    return RK_STAGES[method] * steps
