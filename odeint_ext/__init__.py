"""Extended adjoint odeint: dynamics with extra inputs (keys, values, masks, encoder output).

Generic: depends on torch and torchdiffeq only, never on fairseq.
"""

from .errors import MaxNFEExceeded, NonFiniteStateError, ODESolveError
from .methods import ADAPTIVE_METHODS, FIXED_GRID_METHODS, METHODS, is_adaptive
from .solve import SolveStats, last_stats, odeint_adjoint_ext, odeint_event_ext, odeint_ext

__all__ = [
    "odeint_ext", "odeint_adjoint_ext", "odeint_event_ext", "SolveStats", "last_stats",
    "ODESolveError", "MaxNFEExceeded", "NonFiniteStateError",
    "METHODS", "ADAPTIVE_METHODS", "FIXED_GRID_METHODS", "is_adaptive",
]
