"""Extended adjoint odeint: dynamics with extra inputs (keys, values, masks, encoder output).

Generic: depends on torch and torchdiffeq only, never on fairseq. ``SolverSettings`` holds how
to solve (method, tolerances, times, steps, budget, backprop, adjoint options) as one value,
checked when it is made; its ``solve`` runs odeint_ext or odeint_adjoint_ext with it.
``error_estimate=`` asks either for the solver's own error estimate as a differentiable
regulariser (``SolveStats.local_error``).
"""

from .error_estimate import ERROR_ESTIMATES
from .errors import MaxNFEExceeded, NonFiniteStateError, ODESolveError
from .methods import (ADAPTIVE_METHODS, ERROR_ESTIMATE_METHODS, FIXED_GRID_METHODS, METHODS,
                      RK_ADAPTIVE_METHODS, is_adaptive)
from .settings import SettingsError, SolverSettings
from .solve import SolveStats, last_stats, odeint_adjoint_ext, odeint_event_ext, odeint_ext

__all__ = [
    "odeint_ext", "odeint_adjoint_ext", "odeint_event_ext", "SolveStats", "last_stats",
    "ODESolveError", "MaxNFEExceeded", "NonFiniteStateError",
    "METHODS", "ADAPTIVE_METHODS", "FIXED_GRID_METHODS", "RK_ADAPTIVE_METHODS", "is_adaptive",
    "ERROR_ESTIMATES", "ERROR_ESTIMATE_METHODS",
    "SolverSettings", "SettingsError",
]
