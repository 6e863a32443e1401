"""The --node-* command-line flags: declaration, defaults and start-up checks.

fairseq parses a model's flags with ``argument_default=SUPPRESS``, so defaults are set in
:func:`set_node_defaults` (called by the architecture), not in ``add_argument``.
"""

from __future__ import annotations

import re
from typing import Tuple

from odeint_ext import METHODS, SettingsError, SolverSettings

from .dynamics import OUTPUT_INITS
from .incremental import DECODING_MODES
from .regularisers import Regularisation

DEFAULTS = dict(
    node_encoder=False,
    node_decoder=False,
    node_rtol=0.01,
    node_atol=0.01,
    node_method="dopri5",
    node_ts="[0.0, 1.0]",
    node_max_num_steps=None,
    node_max_nfe=1000,
    node_augment_dims=0,
    node_time_dependent=False,
    node_separated_decoder=False,
    node_backprop="adjoint",
    node_steps=None,
    node_dynamics="study",
    node_output_init="zero",
    node_reproduce_frozen_encoder=False,
    node_on_budget="skip",
    node_decoding="auto",
    node_fallback_steps=8,
    node_first_step=None,
    node_min_step=None,
    node_adjoint_seminorm=False,
    node_kinetic_energy=0.0,
    node_jacobian_norm=0.0,
    node_steer_b=0.0,
)

ON_BUDGET = ("error", "skip", "fixed-step", "defer")
# The flag of each field of odeint_ext.SolverSettings: its errors are reported with these.
SOLVER_FLAGS = dict(method="--node-method", rtol="--node-rtol", atol="--node-atol", ts="--node-ts",
                    max_num_steps="--node-max-num-steps", max_nfe="--node-max-nfe",
                    backprop="--node-backprop", steps="--node-steps", first_step="--node-first-step",
                    min_step="--node-min-step", seminorm="--node-adjoint-seminorm")


class NodeArgumentError(ValueError):
    """A --node-* flag, or a combination of them, that cannot work."""


def add_node_args(parser) -> None:
    g = parser.add_argument_group("NODE-Transformer")
    g.add_argument("--node-encoder", action="store_true",
                   help="replace the encoder's stack of layers by one ODE block")
    g.add_argument("--node-decoder", action="store_true",
                   help="replace the decoder's stack of layers by one ODE block")
    g.add_argument("--node-separated-decoder", action="store_true",
                   help="NODE decoder: classic residual self-attention, then an ODE block "
                        "over encoder-attention + feed-forward")
    g.add_argument("--node-rtol", type=float, metavar="R", help="solver relative tolerance (default 0.01)")
    g.add_argument("--node-atol", type=float, metavar="A", help="solver absolute tolerance (default 0.01)")
    g.add_argument("--node-method", type=str, metavar="NAME",
                   help=f"torchdiffeq method (default dopri5): {', '.join(METHODS)}")
    g.add_argument("--node-ts", type=str, metavar="TIMES",
                   help="integration times, increasing, e.g. '[0.0, 1.0]' (default)")
    g.add_argument("--node-max-num-steps", type=int, metavar="N",
                   help="torchdiffeq's max_num_steps for adaptive methods")
    g.add_argument("--node-max-nfe", type=int, metavar="N",
                   help="budget of function evaluations per solve, forward and backward "
                        "each (default 1000; 0 = unbounded)")
    g.add_argument("--node-augment-dims", type=int, metavar="N",
                   help="augment the state with N x heads zero channels (default 0)")
    g.add_argument("--node-time-dependent", action="store_true",
                   help="append t (heads channels) to the dynamics' input")
    g.add_argument("--node-backprop", type=str, metavar="KIND",
                   help="adjoint (default, memory flat in NFE) or direct (through the solver)")
    g.add_argument("--node-dynamics", type=str, metavar="FORM",
                   help="study (default: post-norm sub-layers, no residual) or prenorm (residual "
                        "branch of a pre-norm layer, zero-initialised, final LayerNorm after the solve)")
    g.add_argument("--node-output-init", type=str, metavar="INIT",
                   help="prenorm dynamics: zero (default: the flow starts as the identity) or "
                        "xavier (fairseq's own initialisation of the output projections)")
    g.add_argument("--node-reproduce-frozen-encoder", action="store_true",
                   help="for comparisons only: reproduce the study's bug, in which the NODE "
                        "decoder passed no gradient to the encoder output")
    g.add_argument("--node-steps", type=int, metavar="N",
                   help="fixed-grid methods: number of steps over the interval (default: the --node-ts grid)")
    g.add_argument("--node-decoding", type=str, metavar="MODE",
                   help="generation: auto (default: solve only the newest position where that is "
                        "exact: fixed-grid Runge-Kutta methods, the separated decoder) or recompute "
                        "(solve the whole prefix at every step); with fairseq-generate, "
                        "--model-overrides \"{'node_decoding': 'recompute'}\"")
    g.add_argument("--node-on-budget", type=str, metavar="POLICY",
                   help="a training batch whose solve exceeds --node-max-nfe: error (stop), skip "
                        "(default: drop it, count it), fixed-step (solve it again with rk4, "
                        "--node-fallback-steps steps) or defer (train on it in the next epoch)")
    g.add_argument("--node-fallback-steps", type=int, metavar="N",
                   help="rk4 steps of --node-on-budget fixed-step (default 8)")
    g.add_argument("--node-first-step", type=float, metavar="DT",
                   help="adaptive methods: the first step size tried (default: the solver's guess)")
    g.add_argument("--node-min-step", type=float, metavar="DT",
                   help="adaptive methods: steps this small are accepted whatever their error, "
                        "which bounds the number of steps (default 0)")
    g.add_argument("--node-adjoint-seminorm", action="store_true",
                   help="adjoint backward: leave the parameter gradients out of the error norm "
                        "(fewer backward steps, Kidger et al. 2021)")
    g.add_argument("--node-kinetic-energy", type=float, metavar="C",
                   help="RNODE: add C x integral of ||f||^2 dt to the training loss (default 0)")
    g.add_argument("--node-jacobian-norm", type=float, metavar="C",
                   help="RNODE: add C x integral of ||df/dh||_F^2 dt (Hutchinson estimate) "
                        "to the training loss (default 0)")
    g.add_argument("--node-steer-b", type=float, metavar="B",
                   help="STEER: in training, draw the end time from U(T-B, T+B) per solve (default 0)")


def set_node_defaults(args) -> None:
    for key, value in DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)


def parse_ts(value) -> Tuple[float, ...]:
    """'[0.0, 1.0]', '0,1', '0 0.5 1' or a sequence of numbers -> a strictly increasing tuple."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,]+", value.strip().strip("[]()")) if p]
        try:
            ts = tuple(float(p) for p in parts)
        except ValueError:
            raise NodeArgumentError(f"--node-ts must be a list of numbers, got {value!r}") from None
    else:
        ts = tuple(float(v) for v in value)
    if len(ts) < 2:
        raise NodeArgumentError(f"--node-ts needs at least two times, got {value!r}")
    if any(b <= a for a, b in zip(ts, ts[1:])):
        raise NodeArgumentError(f"--node-ts must be strictly increasing, got {value!r}")
    return ts


def check_node_args(args) -> None:
    """Raise NodeArgumentError naming the first flag that cannot work."""
    if args.node_separated_decoder and not args.node_decoder:
        raise NodeArgumentError("--node-separated-decoder requires --node-decoder")
    if args.node_reproduce_frozen_encoder and not args.node_decoder:
        raise NodeArgumentError("--node-reproduce-frozen-encoder requires --node-decoder")
    if args.node_augment_dims < 0:
        raise NodeArgumentError(f"--node-augment-dims must be >= 0, got {args.node_augment_dims}")
    if args.node_dynamics not in ("study", "prenorm"):
        raise NodeArgumentError(f"--node-dynamics must be study or prenorm, got {args.node_dynamics!r}")
    if args.node_output_init not in OUTPUT_INITS:
        raise NodeArgumentError(f"--node-output-init must be zero or xavier, got {args.node_output_init!r}")
    if args.node_output_init != "zero" and args.node_dynamics != "prenorm":
        raise NodeArgumentError("--node-output-init applies to --node-dynamics prenorm only")
    if args.node_dynamics == "prenorm" and args.node_time_dependent:
        raise NodeArgumentError("--node-time-dependent is not available with --node-dynamics prenorm")
    if args.node_max_nfe is not None and args.node_max_nfe < 0:
        raise NodeArgumentError(f"--node-max-nfe must be >= 0 (0 = unbounded), got {args.node_max_nfe}")
    ts = parse_ts(args.node_ts)
    try:
        solver_config(args)  # odeint_ext checks the solver settings, all together
    except SettingsError as e:
        raise NodeArgumentError(e.naming(SOLVER_FLAGS.get)) from None
    if args.node_decoding not in DECODING_MODES:
        raise NodeArgumentError(f"--node-decoding must be one of {', '.join(DECODING_MODES)}, "
                                f"got {args.node_decoding!r}")
    if args.node_on_budget not in ON_BUDGET:
        raise NodeArgumentError(
            f"--node-on-budget must be one of {', '.join(ON_BUDGET)}, got {args.node_on_budget!r}")
    if args.node_fallback_steps < 1:
        raise NodeArgumentError(f"--node-fallback-steps must be >= 1, got {args.node_fallback_steps}")
    for flag, value in (("--node-kinetic-energy", args.node_kinetic_energy),
                        ("--node-jacobian-norm", args.node_jacobian_norm),
                        ("--node-steer-b", args.node_steer_b)):
        if not value >= 0:
            raise NodeArgumentError(f"{flag} must be >= 0, got {value}")
    if args.node_steer_b >= ts[-1] - ts[-2]:
        raise NodeArgumentError(f"--node-steer-b {args.node_steer_b} must be smaller than the "
                                f"last interval of --node-ts ({ts[-1] - ts[-2]:g})")
    if not (args.node_encoder or args.node_decoder):
        changed = [k for k, v in DEFAULTS.items() if getattr(args, k, v) != v]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise NodeArgumentError(f"{flags} given without --node-encoder or --node-decoder: "
                                    "no ODE block would use it")


def solver_config(args) -> SolverSettings:
    """The solver settings of the flags (odeint_ext raises SettingsError if they cannot work)."""
    return SolverSettings(
        method=args.node_method,
        rtol=args.node_rtol,
        atol=args.node_atol,
        ts=parse_ts(args.node_ts),
        max_num_steps=args.node_max_num_steps,
        max_nfe=args.node_max_nfe or None,
        backprop=args.node_backprop,
        steps=args.node_steps,
        first_step=args.node_first_step,
        min_step=args.node_min_step,
        seminorm=args.node_adjoint_seminorm,
    )


def regularisation(args) -> Regularisation:
    return Regularisation(kinetic=args.node_kinetic_energy, jacobian=args.node_jacobian_norm,
                          steer_b=args.node_steer_b)
