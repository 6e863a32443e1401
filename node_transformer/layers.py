"""ODE blocks shaped like fairseq's encoder and decoder layers, so fairseq's own encoder and
decoder loops can run them in the place of their stacks of residual layers.

Augmentation (Dupont et al. 2019) lives here: ``node_augment_dims * heads`` zero channels are
appended to the state and to the encoder output seen by encoder-attention, and a linear map
projects the final state back to the model's width.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules import LayerNorm, MultiheadAttention
from torch import Tensor, nn

from .config import NodeConfig
from .dynamics import AttentionRecord, SolveDropout
from .incremental import StageCache, position_free
from .input_errors import OldCheckpointFormat
from .ode_block import ODEBlock
from .rk_blocks import GatedRK2Block, PredictorCorrectorBlock, RK2Gate


def build_block(node: NodeConfig, dynamics: nn.Module, shared_gate: Optional[RK2Gate] = None):
    """The block that --node-block names, around ``dynamics``; ``shared_gate``: the side's
    RK2Gate, shared by its rk2-gated blocks (made here when None)."""
    solver = node.solver_settings()
    if node.node_block == "rk2-gated":
        return GatedRK2Block(dynamics, shared_gate or RK2Gate(dynamics.fc2.out_features), solver.ts)
    if node.node_block == "pc":
        return PredictorCorrectorBlock(dynamics, node.node_pc_order, solver.ts)
    return ODEBlock(dynamics, solver, node.regularisation())


class SideBuild:
    """What an encoder or decoder of ODE blocks shares between its layers while fairseq
    builds them: the --node-* settings and the rk2-gated blocks' one gate (ODE Transformer
    shares it across a side's blocks). Not a module: the gate is registered in the blocks."""

    def __init__(self, node: NodeConfig):
        self.node = node
        self._gate: Optional[RK2Gate] = None

    def gate(self, side_cfg, dim: int) -> Optional[RK2Gate]:
        if self.node.node_block != "rk2-gated":
            return None
        if self._gate is None:
            self._gate = RK2Gate(dim + self.node.node_augment_dims * side_cfg.attention_heads)
        return self._gate

    def final_norm(self, fairseq_norm: Optional[nn.Module], dim: int) -> Optional[nn.Module]:
        """The side's norm after its last layer: fairseq's (a pre-norm config), or one for
        dynamics whose output is not normalised (the pre-norm form), or none."""
        if fairseq_norm is not None or self.node.dynamics_class.post_norm:
            return fairseq_norm
        return LayerNorm(dim)

    def upgrade(self, state_dict, name: str, layers: int) -> None:
        """Checkpoints written before 2026-12-05 normalised pre-norm dynamics inside each
        block (``layers.N.final_norm``); that norm is now the side's ``layer_norm`` after the
        last block, the same function for one block."""
        prefix = f"{name}." if name else ""
        old = [k for k in state_dict if k.startswith(f"{prefix}layers.") and ".final_norm." in k]
        if not old:
            return
        if layers != 1:
            raise OldCheckpointFormat(f"{prefix}layers: this checkpoint normalises after each of its {layers} "
                             "pre-norm ODE blocks, which this version no longer builds (it "
                             "normalises once after the last block); load it with an older "
                             "node-transformer")
        for key in old:
            state_dict[f"{prefix}layer_norm." + key.rsplit(".final_norm.", 1)[1]] = state_dict.pop(key)


class NotScriptableError(RuntimeError):
    """``torch.jit.script`` of a model (or generator) with a NODE side."""


def _augment(x: Tensor, n: int) -> Tensor:
    if n == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], x.shape[1], n)], dim=-1)


class _NODELayer(nn.Module):
    """``cfg``: fairseq's TransformerConfig (sizes, dropout, activation); ``node``: the
    --node-* settings; ``side_cfg``: cfg.encoder or cfg.decoder."""

    def __init__(self, cfg, node: NodeConfig, side_cfg, dynamics_kwargs, shared_gate=None):
        super().__init__()
        dim, heads = side_cfg.embed_dim, side_cfg.attention_heads
        self.aug = node.node_augment_dims * heads
        self.dropout = cfg.dropout
        form = node.dynamics_class
        if form.takes_output_init:
            dynamics_kwargs = dict(dynamics_kwargs, output_init=node.node_output_init)
        dynamics = form(
            dim + self.aug, side_cfg.ffn_embed_dim, heads,
            time_dependent=node.node_time_dependent,
            # as fairseq's layers: the old --relu-dropout where --activation-dropout is 0
            activation_dropout=cfg.activation_dropout or cfg.relu_dropout or 0.0,
            activation_fn=cfg.activation_fn, **dynamics_kwargs,
        )
        self.block = build_block(node, dynamics, shared_gate)
        self.retain_dropout = False  # --retain-dropout at generation (make_generation_fast_)
        self.project = nn.Linear(dim + self.aug, dim) if self.aug else None
        # Dynamics without a normalised output leave the state unnormalised: the encoder or
        # decoder normalises once after its last block, as a pre-norm Transformer does after
        # its last layer (final_layer_norm of the side, see encoder.py / decoder.py).

    def dropout_active(self) -> bool:
        return self.training or self.retain_dropout

    def make_generation_fast_(self, name: Optional[str] = None, retain_dropout: bool = False,
                              retain_dropout_modules=None, **kwargs):
        """fairseq's --retain-dropout (prepare_for_inference_) keeps the blocks' dropout at
        inference too: all of it, or, with --retain-dropout-modules, that of the layers whose
        class it names (NODEEncoderLayer, NODEDecoderLayer), as fairseq names its own."""
        if retain_dropout and (not retain_dropout_modules or type(self).__name__ in retain_dropout_modules):
            self.retain_dropout = True

    def solve(self, x: Tensor, padding_mask: Optional[Tensor] = None, **inputs) -> Tensor:
        h = self.block(_augment(x, self.aug), padding_mask=padding_mask,
                       drop=SolveDropout(self.dropout, self.dropout_active()), **inputs)
        return self.project(h) if self.project is not None else h

    def upgrade_state_dict_named(self, state_dict, name):
        """Nothing to upgrade: fairseq's encoder calls this on each of its layers."""

    def __prepare_scriptable__(self):
        """torch.jit.script calls this on every submodule before it compiles anything: one
        clear error here instead of a NotSupportedError deep inside a solve."""
        raise NotScriptableError(
            f"node_transformer: TorchScript is not supported for a model with a NODE side "
            f"({type(self).__name__}): its blocks solve with torchdiffeq's Python solvers "
            "(adaptive steps, Python control flow) and call their dynamics from Python with "
            "keyword inputs and per-solve dropout masks, which torch.jit.script cannot "
            "compile; run the model in eager mode, as fairseq-generate, fairseq-interactive and "
            "the hub do")


class NODEEncoderLayer(_NODELayer):
    """dh/dt = self-attention + feed-forward."""

    def __init__(self, cfg, node: NodeConfig, shared_gate: Optional[RK2Gate] = None):
        super().__init__(cfg, node, cfg.encoder, dict(self_attention=True, encoder_attention=False),
                         shared_gate)

    def forward(self, x: Tensor, encoder_padding_mask: Optional[Tensor] = None, attn_mask=None):
        return self.solve(x, padding_mask=encoder_padding_mask, self_padding_mask=encoder_padding_mask)


@with_incremental_state
class NODEDecoderLayer(_NODELayer):
    """dh/dt = self-attention + encoder-attention + feed-forward; or, separated, a classic
    residual self-attention sub-layer followed by dh/dt = encoder-attention + feed-forward.

    With fairseq's ``incremental_state`` (generation), ``x`` is the newest target position
    only: the separated layer keeps the classic key/value cache of its self-attention and
    solves the new position alone (approximately with an adaptive method); the full layer needs a fixed-grid solve (``cacheable``)
    and attends, at each evaluation, to the earlier positions' keys/values of that same
    evaluation (incremental.StageCache). Both project the encoder output to keys/values once
    per generated batch, not once per evaluation.
    """

    def __init__(self, cfg, node: NodeConfig, shared_gate: Optional[RK2Gate] = None):
        separated = node.node_separated_decoder
        heads = cfg.decoder.attention_heads
        super().__init__(cfg, node, cfg.decoder, dict(
            self_attention=not separated, encoder_attention=True,
            encoder_dim=cfg.encoder.embed_dim + node.node_augment_dims * heads,
        ), shared_gate)
        self.frozen_encoder = node.node_reproduce_frozen_encoder
        self.self_attn = self.self_attn_norm = None
        if separated:
            dim = cfg.decoder.embed_dim
            self.self_attn = MultiheadAttention(dim, heads, dropout=cfg.attention_dropout,
                                                self_attention=True)
            self.self_attn_norm = LayerNorm(dim)

    def cacheable(self) -> bool:
        """Whether generation can solve the newest position alone: the separated layer with
        any method (approximately with an adaptive one, see ``cache_exact``), the full layer on
        a fixed Runge-Kutta grid."""
        return self.self_attn is not None or self.cache_exact()

    def cache_exact(self) -> bool:
        """Whether solving the newest position alone gives what recomputing the prefix gives:
        not with an adaptive method, whose steps the error of every position solved together
        chooses (incremental.py)."""
        if self.self_attn is None or not hasattr(self.block, "solver"):
            return self.block.staged()  # a learned RK block: always (rk_blocks.py)
        return position_free(self.block.fallback or self.block.solver)

    def forward(
        self,
        x: Tensor,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        incremental_state=None,
        prev_self_attn_state=None,
        prev_attn_state=None,
        self_attn_mask: Optional[Tensor] = None,
        self_attn_padding_mask: Optional[Tensor] = None,
        need_attn: bool = False,
        need_head_weights: bool = False,
    ):
        if self.frozen_encoder:
            encoder_out = encoder_out.detach()
        inputs = dict(encoder_out=_augment(encoder_out, self.aug), encoder_padding_mask=encoder_padding_mask)
        cache = None
        if incremental_state is not None:
            if not self.cacheable():
                raise ValueError("this NODE decoder layer cannot decode incrementally (its solver "
                                 "is not a fixed-grid Runge-Kutta method): recompute the prefix")
            enc_state = self.get_incremental_state(incremental_state, "encoder_kv")
            if enc_state is None:  # filled by the dynamics at the first evaluation
                enc_state = {}
                self.set_incremental_state(incremental_state, "encoder_kv", enc_state)
            inputs["encoder_state"] = enc_state
        if self.self_attn is not None:
            residual = x
            x, _ = self.self_attn(x, x, x, key_padding_mask=self_attn_padding_mask,
                                  incremental_state=incremental_state,
                                  attn_mask=self_attn_mask, need_weights=False)
            x = self.self_attn_norm(residual + F.dropout(x, self.dropout, self.dropout_active()))
        else:
            inputs.update(self_attn_mask=self_attn_mask, self_padding_mask=self_attn_padding_mask)
            if incremental_state is not None:
                cache = self.get_incremental_state(incremental_state, "stages")
                if cache is None:
                    cache = StageCache()
                    self.set_incremental_state(incremental_state, "stages", cache)
                cache.begin()
                inputs["stage_cache"] = cache
        record = AttentionRecord() if need_attn or need_head_weights else None
        if record is not None:
            inputs["attn_record"] = record
        x = self.solve(x, padding_mask=self_attn_padding_mask, **inputs)
        if cache is not None:
            cache.end()
        return x, self._alignment(record, inputs, need_head_weights), None

    def _alignment(self, record: Optional[AttentionRecord], inputs: dict, per_head: bool):
        """fairseq's alignment of this layer: the encoder-attention weights of the solve's last
        evaluation (for dopri5, first-same-as-last, f at the end of its last step; for one
        Euler step the only one, where the block is fairseq's pre-norm layer), per head when
        fairseq asks for head weights, else averaged over them as fairseq's layers do."""
        if record is None or record.query is None:
            return None
        weights = self.block.dynamics.encoder_attention_weights(
            record.query, inputs["encoder_out"], inputs["encoder_padding_mask"])
        return weights if per_head else weights.mean(dim=0)

    def reorder_incremental_state(self, incremental_state, new_order):
        """Reorder this layer's caches with the beam (fairseq calls this on every module; the
        separated layer's classic self-attention reorders its own)."""
        cache = self.get_incremental_state(incremental_state, "stages")
        if cache is not None:
            cache.reorder(self.block.dynamics.self_attn, new_order)
        enc_state = self.get_incremental_state(incremental_state, "encoder_kv")
        for key, value in (enc_state or {}).items():  # rows first
            enc_state[key] = value.index_select(0, new_order)
