"""The names of the numbers node_translation logs: defined here once, emitted by task.py,
read by the experiment harness (experiments/: log parser, tables, plots, benchmark).

A rename here reaches every consumer through its import, and tests/test_metric_names.py runs
the task and feeds its log to the parser, so producer and consumers cannot drift apart.

Standard library only, on purpose. ``import node_transformer.metric_names`` runs the
package's ``__init__``, which imports fairseq to register the plugin (seconds); the harness's
light commands (results tables, plots, --help) load this file by path instead (see
experiments/names.py) and so never pay for fairseq.
"""

# A NODE side of the model: (attribute of the model, tag in the metric names).
SIDES = (("encoder", "enc"), ("decoder", "dec"))
FORWARD, BACKWARD = "fwd", "bwd"


def nfe_key(tag: str, direction: str) -> str:
    """NFE of one side's solves per batch, forward or adjoint backward: ``nfe_dec_fwd``."""
    return f"nfe_{tag}_{direction}"


NFE_KEYS = tuple(nfe_key(tag, d) for _, tag in SIDES for d in (FORWARD, BACKWARD))
NFE_PREFIX = "nfe_"

# --node-on-budget outcomes, counted per logging interval and per epoch (sums, not means).
SKIPPED = "node_skipped"
FIXED_STEP = "node_fixed_step"
DEFERRED = "node_deferred"
REPLAYED = "node_replayed"
COUNTERS = (SKIPPED, FIXED_STEP, DEFERRED, REPLAYED)
VALID_COUNTERS = (SKIPPED, FIXED_STEP)  # validation neither defers nor replays
POLICY_COUNTERS = (FIXED_STEP, DEFERRED, REPLAYED)  # the policies' own, beside SKIPPED

# RNODE penalties (integrated per batch, before their coefficient): rnode_kinetic ...
PENALTY_PREFIX = "rnode_"
PENALTY_NAMES = ("kinetic", "jacobian")


def penalty_key(name: str) -> str:
    return PENALTY_PREFIX + name


PENALTY_KEYS = tuple(penalty_key(n) for n in PENALTY_NAMES)

# --node-error-penalty: the solver's error estimate per batch (summed over a side's blocks, per
# side as the NFE; training only): err_enc, err_dec.
ERROR_PREFIX = "err_"


def error_key(tag: str) -> str:
    return ERROR_PREFIX + tag


ERROR_KEYS = tuple(error_key(tag) for _, tag in SIDES)


def error_batches_key(tag: str) -> str:
    """Batches of one side that had an error estimate: the divisor of its err_ mean. A batch
    without one (the rk4 fallback, every block of the side dropped by LayerDrop) is left out
    of the mean rather than counted as an estimate of 0."""
    return f"node_err_batches_{tag}"

BATCHES = "node_batches"  # batches whose NFE a log holds: the divisor of the NFE means
CUDA_PEAK = "cuda_peak_mb"  # largest CUDA memory allocated in the interval, in MiB
