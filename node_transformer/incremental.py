"""Incremental (cached) decoding for NODE decoders: which solves allow it, and the cache.

A full NODE decoder's self-attention keys of earlier target positions move along ODE time,
so a classic per-token key/value cache does not apply. On a fixed grid it does per
*evaluation*: with causal self-attention no earlier position depends on a later one, and an
explicit Runge-Kutta method on a fixed grid evaluates the dynamics in the same order, at the
same times and stages, for every position and every prefix length. So evaluation k of the new
position's solve needs exactly the keys/values that evaluation k of each earlier position's
solve made: one fairseq attention state per evaluation number holds them (StageCache).

The separated decoder's ODE (encoder-attention + feed-forward) has no interaction between
target positions: only the new position is solved. That is exact when no error norm over the
positions chooses the solve's steps (a fixed grid). With an adaptive method it is an
approximation: the new position gets its own steps, chosen from its error alone, where the
prefix's solve (and training's) shares one step sequence chosen from all positions' errors
(float64, dopri5 at 1e-2: outputs ~1e-2 apart). ``node_decoding`` decides (DECODING_MODES).
"""

from __future__ import annotations

from typing import List, Optional

# Explicit Runge-Kutta methods on a fixed grid: their sequence of evaluations does not depend
# on the data (torchdiffeq: euler 1, midpoint 2, heun2 2, heun3 3, rk4 4 per step). The Adams
# methods keep a history (implicit_adams iterates to a tolerance): they recompute the prefix.
STAGED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")

# Fixed-grid methods with no error norm over the positions: a position's solve is the same
# alone or beside others. (The Adams-Moulton corrector of implicit_adams / fixed_adams iterates
# until every position has converged: its iterations depend on the others.)
POSITION_FREE_METHODS = STAGED_METHODS + ("explicit_adams",)

# Values of the generation-time setting ``node_decoding`` (see NODETransformerDecoder):
# auto: cached wherever the layers can, announcing where that is approximate (the separated
# decoder with an adaptive method); exact: cached only where it equals recomputation;
# recompute: always re-solve the prefix (the reference).
DECODING_MODES = ("auto", "exact", "recompute")

# The measurement quoted when auto decodes approximately (README "Fast decoding").
APPROXIMATE_NOTE = ("approximate: each position gets its own adaptive steps; measured on config "
                    "07 test2016: 99.1% identical hypotheses, same BLEU; node_decoding 'exact' "
                    "recomputes the prefix instead")


def staged(solver) -> bool:
    """True when a solve with these SolverSettings evaluates in a data-independent order."""
    return solver.method in STAGED_METHODS


def position_free(solver) -> bool:
    """True when a solve with these SolverSettings treats each position as if it were alone."""
    return solver.method in POSITION_FREE_METHODS


class StageCache:
    """Self-attention keys/values of the earlier target positions, one fairseq attention
    state per evaluation number of a fixed-grid solve.

    ``begin`` starts a solve; each evaluation takes the next state (``next_state``); ``end``
    checks that this solve made as many evaluations as the first one (else the cache would
    pair stages wrongly: fail loudly rather than decode wrongly).
    """

    def __init__(self):
        self.states: List[dict] = []
        self.evaluations: Optional[int] = None  # per solve, set by the first solve
        self._k = 0

    def begin(self) -> None:
        self._k = 0

    def next_state(self) -> dict:
        if self.evaluations is not None and self._k >= self.evaluations:
            raise RuntimeError(f"cached NODE decoding: a solve made more than the first solve's "
                               f"{self.evaluations} evaluations")
        if self._k == len(self.states):
            self.states.append({})
        state = self.states[self._k]
        self._k += 1
        return state

    def end(self) -> None:
        if self.evaluations is None:
            self.evaluations = self._k
        elif self._k != self.evaluations:
            raise RuntimeError(f"cached NODE decoding: a solve made {self._k} evaluations, the "
                               f"first one {self.evaluations}; its grid is not fixed")

    def reorder(self, attention, new_order) -> None:
        """Follow the beam: ``attention`` is the dynamics' self-attention module."""
        for state in self.states:
            attention.reorder_incremental_state(state, new_order)


class GenerationNFE:
    """Decoder evaluations made by generation steps, for logging: ``total`` counts each
    solve once (it covers the whole batch); ``rows`` weighs each solve by the hypotheses it
    advanced, so rows / beam / sentences is the NFE one sentence's translation needed."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.total = 0
        self.rows = 0

    def add(self, nfe: int, rows: int) -> None:
        self.steps += 1
        self.total += nfe
        self.rows += nfe * rows

    def per_sentence(self, sentences: int, beam: int) -> float:
        return self.rows / beam / sentences if sentences else 0.0


def decoding_mode(settings) -> str:
    """The ``node_decoding`` of a config.NodeConfig (or of any object that may carry one)."""
    mode = getattr(settings, "node_decoding", None) or "auto"
    if mode not in DECODING_MODES:
        raise ValueError(f"node_decoding must be one of {', '.join(DECODING_MODES)}, got {mode!r}")
    return mode


