"""Errors raised by odeint_ext: every one is a RuntimeError, so callers can catch them together."""


class ODESolveError(RuntimeError):
    """A solve could not finish (torchdiffeq gave up, or a guard of ours stopped it)."""


class MaxNFEExceeded(ODESolveError):
    """The dynamics were asked for more evaluations than the solve's budget allows.

    Raised from inside the dynamics, so it fires after at most ``limit`` evaluations
    whatever the solver does, and under ``python -O`` too (torchdiffeq's own guards are
    assert statements, which -O removes).
    """

    def __init__(self, nfe: int, t: float, limit: int, phase: str = "forward"):
        self.nfe, self.t, self.limit, self.phase = nfe, t, limit, phase
        super().__init__(
            f"ODE {phase} solve exceeded its budget: NFE {nfe} > max_nfe {limit} "
            f"(reached t={t:.6g})"
        )

    def __reduce__(self):  # picklable across processes (Exception pickles args only)
        return type(self), (self.nfe, self.t, self.limit, self.phase)


class NonFiniteStateError(ODESolveError):
    """The solution holds NaN or Inf: the dynamics blew up."""
