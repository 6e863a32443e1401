"""The --node-* settings as one typed dataclass, in the style of fairseq's TransformerConfig.

Each field is declared once: its type, default, help text, its own check and, for the
solver's settings, the odeint_ext.SolverSettings field it feeds. The model's ``add_args``
turns the fields into flags (``gen_parser_from_dataclass``); fairseq parses model flags with
``argument_default=SUPPRESS``, so the architecture fills in the defaults
(:meth:`NodeConfig.set_defaults`). Field names are the flags' and the checkpoints' names
(``node_rtol`` is ``--node-rtol``), so saved args, ``--model-overrides`` and the hub's
keyword overrides keep working.
"""

# No ``from __future__ import annotations``: fairseq reads the fields' types as classes.

import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, Tuple

from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models.transformer.transformer_config import DEFAULT_MIN_PARAMS_TO_WRAP

from odeint_ext import (ERROR_ESTIMATE_METHODS, FIXED_GRID_METHODS, METHODS, RK_ADAPTIVE_METHODS,
                        SettingsError, SolverSettings)

from .dynamics import DYNAMICS, OUTPUT_INITS
from .incremental import DECODING_MODES
from .regularisers import Regularisation
from .rk_blocks import BLOCKS, PC_ORDERS

ON_BUDGET = ("error", "skip", "fixed-step", "defer")
ERROR_ESTIMATES = ("local", "global")

# Solver settings that only some methods take: (field, the methods that take it). A model
# loaded to translate or validate with another method than it was trained with keeps only
# those its new method takes (NodeConfig.for_inference).
METHOD_SPECIFIC = (
    ("node_steps", FIXED_GRID_METHODS),
    ("node_train_steps", FIXED_GRID_METHODS),
    ("node_max_num_steps", tuple(m for m in METHODS if m not in FIXED_GRID_METHODS)),
    ("node_first_step", RK_ADAPTIVE_METHODS),
    ("node_min_step", RK_ADAPTIVE_METHODS),
    ("node_adjoint_seminorm", RK_ADAPTIVE_METHODS),
)


class NodeArgumentError(ValueError):
    """A --node-* flag, or a combination of them, that cannot work."""


def flag(name: str) -> str:
    """The command-line flag of a field: node_max_nfe -> --node-max-nfe."""
    return "--" + name.replace("_", "-")


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


# Per-field checks: value -> None, or what is wrong (the flag's name goes in front).

def _one_of(choices, listed: bool = True) -> Callable[[Any], Optional[str]]:
    names = [str(c) for c in choices]
    words = "one of " + ", ".join(names) if listed else " or ".join(names)
    return lambda v: None if v in choices else f"must be {words}, got {v!r}"


def _at_least(low, note: str = "") -> Callable[[Any], Optional[str]]:
    # NaN fails ``v >= low`` too.
    return lambda v: None if v is None or v >= low else f"must be >= {low}{note}, got {v}"


def _times(value) -> None:
    parse_ts(value)  # raises, naming --node-ts


def parse_train_steps(value) -> Tuple[int, ...]:
    """'1 2 3' or '1,2,3' -> (1, 2, 3); raises NodeArgumentError naming --node-train-steps."""
    parts = [p for p in re.split(r"[\s,]+", str(value).strip("[]() ")) if p]
    try:
        steps = tuple(int(p) for p in parts)
    except ValueError:
        steps = ()
    if not steps or min(steps) < 1:
        raise NodeArgumentError(f"--node-train-steps must list step counts of at least 1, "
                                f"e.g. '1 2 3'; got {value!r}")
    return steps


def _train_steps(value) -> None:
    if value is not None:
        parse_train_steps(value)  # raises, naming --node-train-steps


def _node(default, text: str, check: Optional[Callable] = None, solver: Optional[str] = None):
    """A field: ``check`` its own test, ``solver`` the SolverSettings field it becomes."""
    meta = {"help": text}
    if check is not None:
        meta["check"] = check
    if solver is not None:
        meta["solver"] = solver
    return field(default=default, metadata=meta)


@dataclass
class NodeConfig(FairseqDataclass):
    """The --node-* settings. ``NodeConfig.from_namespace(args)`` (fairseq's) reads them from
    a namespace; settings it lacks, e.g. an older checkpoint's, keep their defaults."""

    node_encoder: bool = _node(
        False, "replace each of the encoder's --encoder-layers layers by an ODE block "
               "(--encoder-layers defaults to 1 then)")
    node_block: str = _node(
        "ode", "what each block is: ode (default: the dynamics solved by torchdiffeq, --node-method), "
               "rk2-gated (ODE Transformer: one RK2 step with a learned gate, 2 evaluations) or pc "
               "(PCformer: learned-weight RK predictor of --node-pc-order and a corrector, 3 or 5 "
               "evaluations)", check=_one_of(BLOCKS))
    node_pc_order: int = _node(2, "--node-block pc: order of the predictor, 2 or 4 (default 2)",
                               check=_one_of(PC_ORDERS))
    node_decoder: bool = _node(
        False, "replace each of the decoder's --decoder-layers layers by an ODE block "
               "(--decoder-layers defaults to 1 then)")
    node_separated_decoder: bool = _node(
        False, "NODE decoder: classic residual self-attention, then an ODE block over "
               "encoder-attention + feed-forward")
    node_rtol: float = _node(0.01, "solver relative tolerance (default 0.01)", solver="rtol")
    node_atol: float = _node(0.01, "solver absolute tolerance (default 0.01)", solver="atol")
    node_method: str = _node("dopri5", f"torchdiffeq method (default dopri5): {', '.join(METHODS)}",
                             solver="method")
    node_ts: str = _node("[0.0, 1.0]", "integration times, increasing, e.g. '[0.0, 1.0]' (default)",
                         check=_times, solver="ts")
    node_max_num_steps: Optional[int] = _node(
        None, "torchdiffeq's max_num_steps for adaptive methods", solver="max_num_steps")
    node_max_nfe: Optional[int] = _node(
        1000, "budget of function evaluations per solve, forward and backward each "
              "(default 1000; 0 = unbounded)",
        check=_at_least(0, " (0 = unbounded)"), solver="max_nfe")
    node_augment_dims: int = _node(0, "augment the state with N x heads zero channels (default 0)",
                                   check=_at_least(0))
    node_time_dependent: bool = _node(False, "append t (heads channels) to the dynamics' input")
    node_backprop: str = _node(
        "adjoint", "adjoint (default, memory flat in NFE) or direct (through the solver)",
        solver="backprop")
    node_dynamics: str = _node(
        "study", "study (default: post-norm sub-layers, no residual) or prenorm (residual branch "
                 "of a pre-norm layer, zero-initialised, a LayerNorm after the side's last block)",
        check=_one_of(tuple(DYNAMICS), listed=False))
    node_output_init: str = _node(
        "zero", "prenorm dynamics: zero (default: the flow starts as the identity) or xavier "
                "(fairseq's own initialisation of the output projections)",
        check=_one_of(OUTPUT_INITS, listed=False))
    node_reproduce_frozen_encoder: bool = _node(
        False, "for comparisons only: reproduce the study's bug, in which the NODE decoder "
               "passed no gradient to the encoder output")
    node_steps: Optional[int] = _node(
        None, "fixed-grid methods: number of steps over the interval (default: the --node-ts grid)",
        solver="steps")
    node_train_steps: Optional[str] = _node(
        None, "fixed-grid methods, in training only: each update solves on a number of steps "
              "drawn uniformly from this list, e.g. '1 2 3' (the same draw on every worker and "
              "block); validation and generation keep --node-steps", check=_train_steps)
    node_decoding: str = _node(
        "auto", "generation: auto (default: solve only the newest position where the layers "
                "allow it: fixed-grid Runge-Kutta methods, exactly; the separated decoder with "
                "any method, approximately with an adaptive one, as its log line says), exact "
                "(the newest position alone only where that equals recomputation) or recompute "
                "(solve the whole prefix at every step); with fairseq-generate, "
                "--model-overrides \"{'node_decoding': 'exact'}\"",
        check=_one_of(DECODING_MODES))
    node_on_budget: str = _node(
        "skip", "a training batch whose solve exceeds --node-max-nfe: error (stop), skip "
                "(default: drop it, count it), fixed-step (solve it again with rk4, "
                "--node-fallback-steps steps) or defer (train on it in the next epoch)",
        check=_one_of(ON_BUDGET))
    node_fallback_steps: int = _node(8, "rk4 steps of --node-on-budget fixed-step (default 8)",
                                     check=_at_least(1))
    node_first_step: Optional[float] = _node(
        None, "adaptive methods: the first step size tried (default: the solver's guess)",
        solver="first_step")
    node_min_step: Optional[float] = _node(
        None, "adaptive methods: steps this small are accepted whatever their error, which "
              "bounds the number of steps (default 0)", solver="min_step")
    node_adjoint_seminorm: bool = _node(
        False, "adjoint backward: leave the parameter gradients out of the error norm "
               "(fewer backward steps, Kidger et al. 2021)", solver="seminorm")
    node_kinetic_energy: float = _node(
        0.0, "RNODE: add C x integral of ||f||^2 dt to the training loss (default 0)",
        check=_at_least(0))
    node_jacobian_norm: float = _node(
        0.0, "RNODE: add C x integral of ||df/dh||_F^2 dt (Hutchinson estimate) to the "
             "training loss (default 0)", check=_at_least(0))
    node_steer_b: float = _node(
        0.0, "STEER: in training, draw the end time from U(T-B, T+B) per solve (default 0)",
        check=_at_least(0))
    node_error_penalty: float = _node(
        0.0, "add W x the solver's error estimate (--node-error-estimate) per token to the "
             "training loss (default 0); adaptive methods with an embedded error pair",
        check=_at_least(0))
    node_error_estimate: str = _node(
        "local", "--node-error-penalty: local (default: one accepted step, drawn at random, "
                 "taken again with gradient) or global (the error ratios of every accepted "
                 "step, summed; --node-backprop direct only)",
        check=_one_of(ERROR_ESTIMATES, listed=False))

    # -- flags and namespaces ------------------------------------------------------------

    @classmethod
    def add_args(cls, parser) -> None:
        """The flags, without defaults (see module docstring). fairseq passes the model's
        "Model-specific configuration" group, whose argument_default SUPPRESS they need; a
        group nested in it would not be shown by --help (argparse deprecates nesting)."""
        gen_parser_from_dataclass(parser, cls(), delete_default=True)

    @classmethod
    def node_fields(cls):
        return [f for f in fields(cls) if not f.name.startswith("_")]

    @classmethod
    def set_defaults(cls, args) -> None:
        """Give ``args`` (a fairseq namespace, or an old checkpoint's) every missing setting."""
        for f in cls.node_fields():
            if not hasattr(args, f.name):
                setattr(args, f.name, f.default)

    def changed(self):
        """The names of the fields that differ from their defaults."""
        return [f.name for f in self.node_fields() if getattr(self, f.name) != f.default]

    # -- checks ----------------------------------------------------------------------------

    def validate(self, training: bool = True) -> "NodeConfig":
        """Raise NodeArgumentError naming the first flag that cannot work; else return self.
        ``training=False`` (a checkpoint loaded to validate or translate): the settings that
        only shape training (the error penalty, STEER) are not checked, since no solve uses
        them; what the solver itself needs still is."""
        for f in self.node_fields():
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check is not None else None
            if problem:
                raise NodeArgumentError(f"{flag(f.name)} {problem}")
        if self.node_separated_decoder and not self.node_decoder:
            raise NodeArgumentError("--node-separated-decoder requires --node-decoder")
        if self.node_reproduce_frozen_encoder and not self.node_decoder:
            raise NodeArgumentError("--node-reproduce-frozen-encoder requires --node-decoder")
        dynamics = self.dynamics_class
        if self.node_output_init != "zero" and not dynamics.takes_output_init:
            forms = " or ".join(k for k, v in DYNAMICS.items() if v.takes_output_init)
            raise NodeArgumentError(f"--node-output-init applies to --node-dynamics {forms} only")
        if self.node_time_dependent and not dynamics.takes_time:
            raise NodeArgumentError("--node-time-dependent is not available with "
                                    f"--node-dynamics {self.node_dynamics}")
        self._check_block()
        if self.node_decoding != "auto" and not self.node_decoder:
            raise NodeArgumentError(f"--node-decoding {self.node_decoding} requires --node-decoder "
                                    "(it chooses how a NODE decoder generates)")
        solver = self.solver_settings()  # odeint_ext checks the solver settings, all together
        ts = solver.ts
        fewest = solver.fewest_evaluations()
        if solver.max_nfe is not None and solver.max_nfe < fewest:
            given = ", ".join(f"{flag(n)} {getattr(self, n)}" for n in
                              ("node_method", "node_steps", "node_ts", "node_first_step",
                               "node_min_step", "node_backprop")
                              if n == "node_method" or n in self.changed())
            raise NodeArgumentError(f"--node-max-nfe {self.node_max_nfe} is below the {fewest} "
                                    f"evaluations every solve with {given} makes: no batch could "
                                    "pass it (0 = unbounded)")
        if training:
            self._check_error_penalty()
        if training and self.node_train_steps is not None and solver.method not in FIXED_GRID_METHODS:
            raise NodeArgumentError(f"--node-train-steps applies to fixed-grid methods "
                                    f"({', '.join(FIXED_GRID_METHODS)}), got --node-method "
                                    f"{self.node_method}")
        if training and self.node_steer_b >= ts[-1] - ts[-2]:
            raise NodeArgumentError(f"--node-steer-b {self.node_steer_b} must be smaller than the "
                                    f"last interval of --node-ts ({ts[-1] - ts[-2]:g})")
        if not (self.node_encoder or self.node_decoder) and self.changed():
            flags = ", ".join(flag(name) for name in self.changed())
            raise NodeArgumentError(f"{flags} given without --node-encoder or --node-decoder: "
                                    "no ODE block would use it")
        return self

    def _check_error_penalty(self) -> None:
        if self.node_error_penalty == 0:
            if "node_error_estimate" in self.changed():
                raise NodeArgumentError("--node-error-estimate applies with --node-error-penalty only")
            return
        if self.node_method not in ERROR_ESTIMATE_METHODS:
            raise NodeArgumentError(f"--node-error-penalty needs a method with an embedded error "
                                    f"estimate ({', '.join(ERROR_ESTIMATE_METHODS)}), got "
                                    f"--node-method {self.node_method}")
        if self.node_error_estimate == "global" and self.node_backprop == "adjoint":
            raise NodeArgumentError("--node-error-estimate global needs --node-backprop direct (the "
                                    "adjoint keeps no graph of the forward's steps): use local")

    def _check_block(self) -> None:
        """A learned RK block takes one step of its own scheme: the solver's and the penalties'
        settings have nothing to act on."""
        if self.node_block == "ode":
            if self.node_pc_order != 2:
                raise NodeArgumentError("--node-pc-order applies to --node-block pc only")
            return
        if self.node_block != "pc" and self.node_pc_order != 2:
            raise NodeArgumentError("--node-pc-order applies to --node-block pc only")
        solver_only = [f.name for f in self.node_fields()
                       if ("solver" in f.metadata and f.name != "node_ts")
                       or f.name in ("node_on_budget", "node_fallback_steps", "node_kinetic_energy",
                                     "node_jacobian_norm", "node_steer_b", "node_error_penalty",
                                     "node_error_estimate", "node_train_steps")]
        given = [name for name in self.changed() if name in solver_only]
        if given:
            raise NodeArgumentError(f"{', '.join(flag(n) for n in given)} appl"
                                    f"{'ies' if len(given) == 1 else 'y'} to --node-block ode "
                                    f"only (--node-block {self.node_block} takes one learned step)")
        if len(parse_ts(self.node_ts)) != 2:
            raise NodeArgumentError(f"--node-block {self.node_block} takes one step: --node-ts "
                                    f"must be two times, got {self.node_ts!r}")

    def for_inference(self) -> Tuple["NodeConfig", Tuple[str, ...]]:
        """(this config for a loaded checkpoint, the settings left out): the method-specific
        solver settings that --node-method (perhaps overridden at load time) does not take
        are reset, so that a model trained with ``dopri5 --node-first-step 1`` can be run
        with ``euler``; each left-out setting is named, as ``--node-first-step 1.0``."""
        changes = {name: None if name != "node_adjoint_seminorm" else False
                   for name, methods in METHOD_SPECIFIC
                   if self.node_method not in methods and getattr(self, name) not in (None, False)}
        if not changes:
            return self, ()
        dropped = tuple(f"{flag(name)} {getattr(self, name)}" for name in changes)
        values = {f.name: getattr(self, f.name) for f in self.node_fields()}
        return type(self)(**{**values, **changes}), dropped

    # -- typed views -----------------------------------------------------------------------

    def solver_settings(self) -> SolverSettings:
        """The solver's settings, from the fields marked ``solver`` (a SettingsError becomes a
        NodeArgumentError naming the flag)."""
        solver = {f.metadata["solver"]: f.name for f in self.node_fields() if "solver" in f.metadata}
        values = {key: getattr(self, name) for key, name in solver.items()}
        values.update(ts=parse_ts(values["ts"]), max_nfe=values["max_nfe"] or None)  # 0: unbounded
        try:
            return SolverSettings(**values)
        except SettingsError as e:
            raise NodeArgumentError(e.naming(lambda key: flag(solver.get(key, key)))) from None

    def regularisation(self) -> Regularisation:
        return Regularisation(kinetic=self.node_kinetic_energy, jacobian=self.node_jacobian_norm,
                              steer_b=self.node_steer_b, error=self.node_error_penalty,
                              error_estimate=self.node_error_estimate,
                              train_steps=(parse_train_steps(self.node_train_steps)
                                           if self.node_train_steps is not None else ()))

    @property
    def dynamics_class(self):
        """The class of the ODE right-hand side (dynamics.DYNAMICS)."""
        return DYNAMICS[self.node_dynamics]


# -- fairseq's Transformer flags against the NODE sides ----------------------------------------

CHECKPOINTING = ("ODE blocks are not checkpointed: with --node-backprop adjoint (the default) a "
                 "block keeps none of its evaluations' activations already, and with direct "
                 "backprop checkpointing's no-grad first pass would lose the RNODE penalties and "
                 "count every solve twice")


def check_transformer_flags(node: NodeConfig, args) -> None:
    """Raise NodeArgumentError naming the first fairseq Transformer flag of ``args`` (the
    model's args, the architecture's defaults filled in) that a NODE side would not apply:
    the ODE blocks take the place of fairseq's layers, so the flags that fairseq's layers
    read would otherwise be accepted and ignored. docs/training.md tabulates every
    TransformerConfig field (works / refused / n/a); tests/test_fairseq_options.py holds the
    table to this function."""
    sides = [s for s, on in (("encoder", node.node_encoder), ("decoder", node.node_decoder)) if on]
    if not sides:
        return
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    model = " and ".join(f"NODE {side}" for side in sides)

    def refuse(name: str, why: str, value=True):
        shown = "" if value is True else f" {value}"
        raise NodeArgumentError(f"{flag(name)}{shown} is not available with a {model}: {why}")

    _check_shared_flags(node, get, refuse)
    for side in sides:
        layers = get(f"{side}_layers", 1)
        if layers is not None and layers < 1:
            raise NodeArgumentError(f"{flag(side + '_layers')} {layers} leaves --node-{side} no "
                                    "ODE block")
        if get(f"{side}_normalize_before") and node.dynamics_class.post_norm:
            refuse(f"{side}_normalize_before", "a NODE side's norm placement is --node-dynamics "
                   f"(prenorm: the residual branch of a pre-norm layer; {node.node_dynamics}: "
                   "each sub-layer's output normalised)")
    if node.node_decoder:
        _check_decoder_flags(get, refuse)


def _check_shared_flags(node: NodeConfig, get, refuse) -> None:
    """What fairseq's layers of either side read from the shared flags."""
    for name in ("offload_activations", "checkpoint_activations"):  # offload implies checkpoint
        if get(name):
            refuse(name, CHECKPOINTING)
    if get("attention_dropout", 0):
        refuse("attention_dropout", "attention-weight dropout is not applied inside ODE dynamics "
               "(fairseq's attention would draw new masks at every evaluation of f, docs/design.md); "
               "--dropout and --activation-dropout are, with one mask per solve",
               get("attention_dropout"))
    if get("quant_noise_pq", 0):
        refuse("quant_noise_pq", "the dynamics' projections are built without quantization noise",
               get("quant_noise_pq"))
    if get("quant_noise_scalar", 0):
        refuse("quant_noise_scalar", "scalar quantization noise would be drawn anew at every "
               "evaluation of f (a random right-hand side is not an ODE)", get("quant_noise_scalar"))
    if get("min_params_to_wrap", DEFAULT_MIN_PARAMS_TO_WRAP) != DEFAULT_MIN_PARAMS_TO_WRAP:
        refuse("min_params_to_wrap", "ODE blocks are not wrapped for FSDP one by one",
               get("min_params_to_wrap"))
    if get("export"):
        refuse("export", "it makes layer norms exportable to TorchScript, which cannot compile "
               "ODE blocks (docs/platforms.md)")
    for name in ("encoder_xformers_att_config", "decoder_xformers_att_config"):
        # fairseq's decoder layers read the encoder's setting for their encoder-attention
        if get(name) and (name.startswith("encoder") or node.node_decoder):
            refuse(name, "the dynamics build fairseq's own attention", repr(get(name)))


def _check_decoder_flags(get, refuse) -> None:
    """What a NODE decoder's blocks would ignore of fairseq's decoder flags."""
    if get("no_cross_attention"):
        refuse("no_cross_attention", "the NODE decoder's dynamics always attend to the "
               "encoder output")
    if get("cross_self_attention"):
        refuse("cross_self_attention", "the NODE decoder's self-attention does not attend to "
               "the encoder output")
    if get("base_layers", 0):
        refuse("base_layers", "fairseq would insert BASE layers among the NODE decoder's ODE "
               "blocks", get("base_layers"))
    if get("no_decoder_final_norm"):
        refuse("no_decoder_final_norm", "a NODE decoder normalises after its last block "
               "exactly when its --node-dynamics needs it (prenorm)")
