"""The right-hand sides f(t, h) of the NODE-Transformer's ODE blocks.

Each form covers every variant of the study: self-attention (encoder, full decoder),
encoder-attention (full and separated decoder) and the feed-forward network.
``StudyDynamics`` is the study's form (post-norm, no residual: dh/dt = LN(...));
``PreNormDynamics`` is the residual branch of a pre-norm layer (--node-dynamics prenorm).

State and inputs are fairseq's Time x Batch x Channel tensors. Nothing here solves anything:
see ode_block.py.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from fairseq import utils
from fairseq.modules import LayerNorm, MultiheadAttention
from torch import Tensor, nn


class SolveDropout:
    """Dropout masks drawn once per solve and reused by every evaluation of it.

    An ODE with a random right-hand side is not an ODE: fresh masks per evaluation make
    adaptive solvers reject steps at random and give the adjoint backward other masks than
    the forward saw. One instance is created per solve and passed to the dynamics as an
    input, so the adjoint backward of that solve reuses exactly its masks. ``p`` is
    --dropout; a call may name its own rate (--activation-dropout), which applies whatever
    ``p`` is.
    """

    def __init__(self, p: float, active: bool):
        self.p = p
        self.active = active
        self.masks: Dict[str, Tensor] = {}

    def __call__(self, name: str, x: Tensor, p: Optional[float] = None) -> Tensor:
        p = self.p if p is None else p
        if not self.active or p <= 0:
            return x
        mask = self.masks.get(name)
        if mask is None:
            keep = torch.empty_like(x).bernoulli_(1.0 - p)
            mask = self.masks[name] = keep / (1.0 - p)
        return x * mask


class AttentionRecord:
    """Where the encoder-attention of a solve leaves its query, evaluation after evaluation.

    fairseq's alignment (--print-alignment) is one attention map per layer; a solve evaluates
    encoder-attention many times. The record keeps only the query of the latest evaluation
    (a reference, no extra work), and the layer computes that evaluation's weights once after
    the solve (NODEDecoderLayer): per-evaluation weights would cost every evaluation.
    """

    def __init__(self):
        self.query: Optional[Tensor] = None


class TransformerDynamics(nn.Module):
    """The sub-layers of a Transformer layer as an ODE right-hand side; a subclass decides
    how they are put together (``forward``).

    Widths: the state has ``state_dim`` channels (model dim + augmented channels); with
    ``time_dependent`` the sub-layers see ``heads`` more channels holding t. The output has
    ``state_dim`` channels again.
    """

    def __init__(
        self,
        state_dim: int,
        ffn_dim: int,
        heads: int,
        *,
        self_attention: bool,
        encoder_attention: bool,
        encoder_dim: Optional[int] = None,
        time_dependent: bool = False,
        activation_dropout: float = 0.0,
        activation_fn: str = "relu",
    ):
        super().__init__()
        self.heads = heads
        self.time_dependent = time_dependent
        width = state_dim + (heads if time_dependent else 0)
        if width % heads:
            raise ValueError(f"dynamics width {width} is not a multiple of {heads} heads")
        self.activation_dropout = activation_dropout
        self.activation_fn = utils.get_activation_fn(activation_fn)
        # Attention dropout on the weights is not used inside the dynamics (see docs/design.md):
        # fairseq's attention draws its own masks, which would make f random.
        self.self_attn = (
            MultiheadAttention(width, heads, dropout=0.0, self_attention=True)
            if self_attention else None
        )
        self.self_attn_norm = LayerNorm(width) if self_attention else None
        self.encoder_attn = (
            MultiheadAttention(width, heads, kdim=encoder_dim, vdim=encoder_dim, dropout=0.0,
                               encoder_decoder_attention=True)
            if encoder_attention else None
        )
        self.encoder_attn_norm = LayerNorm(width) if encoder_attention else None
        self.fc1 = nn.Linear(width, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, state_dim)
        self.ffn_norm = LayerNorm(state_dim if self.post_norm else width)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    # What a form needs around it and which settings it takes (read by layers.py and config.py):
    post_norm = True  # f is layer-normalised; if not, the side normalises after its last block
    takes_time = True  # time-dependent input (--node-time-dependent)
    takes_output_init = False  # an ``output_init`` argument (--node-output-init)

    def _self_attn(self, x, self_attn_mask, self_padding_mask, stage_cache=None):
        # Cached decoding (incremental.StageCache): x is the newest position; the earlier
        # positions' keys/values of this evaluation come from, and go back to, the cache.
        state = stage_cache.next_state() if stage_cache is not None else None
        return self.self_attn(x, x, x, key_padding_mask=self_padding_mask, incremental_state=state,
                              attn_mask=self_attn_mask, need_weights=False)[0]

    def _encoder_attn(self, x, encoder_out, encoder_padding_mask, encoder_state=None, attn_record=None):
        if attn_record is not None:
            attn_record.query = x
        if encoder_state is not None:
            return self._encoder_attn_cached(x, encoder_out, encoder_padding_mask, encoder_state)
        return self.encoder_attn(x, encoder_out, encoder_out, key_padding_mask=encoder_padding_mask,
                                 need_weights=False)[0]

    def _encoder_attn_cached(self, x, encoder_out, encoder_padding_mask, state: dict):
        """Encoder-attention in generation: the encoder's keys and values are projected once
        per batch into ``state`` (rows x heads x ..., reordered with the beam by
        NODEDecoderLayer), and each evaluation is a query projection, two batched products
        and an output projection. fairseq's attention takes several times as many small
        operations, which is what an evaluation over one position per hypothesis costs."""
        att = self.encoder_attn
        heads, dim = att.num_heads, att.head_dim
        if "key_t" not in state:
            src_len, rows, _ = encoder_out.shape

            def split(t):  # S x B x C -> B x heads x S x dim
                return t.view(src_len, rows, heads, dim).permute(1, 2, 0, 3)

            state["key_t"] = split(att.k_proj(encoder_out)).transpose(2, 3).contiguous()
            state["value"] = split(att.v_proj(encoder_out)).contiguous()
            bias = encoder_out.new_zeros(rows, heads, 1, src_len)
            if encoder_padding_mask is not None:
                bias = bias.masked_fill(encoder_padding_mask.view(rows, 1, 1, src_len), float("-inf"))
            state["bias"] = bias
        tgt_len, rows, width = x.shape
        key_t, value, bias = (state[k].flatten(0, 1) for k in ("key_t", "value", "bias"))
        q = att.q_proj(x).view(tgt_len, rows * heads, dim).transpose(0, 1)
        weights = torch.softmax(torch.baddbmm(bias, q, key_t, alpha=att.scaling), dim=-1)
        out = torch.bmm(weights, value).transpose(0, 1).reshape(tgt_len, rows, heads * dim)
        return att.out_proj(out)

    def encoder_attention_weights(self, query: Tensor, encoder_out: Tensor,
                                  encoder_padding_mask: Optional[Tensor]) -> Tensor:
        """Encoder-attention weights of ``query`` (what an AttentionRecord kept), per head:
        heads x Batch x Time x Source, the shape fairseq's decoder layers return."""
        # static_kv, as fairseq's decoder layer calls it: fairseq's other path averages the heads.
        return self.encoder_attn(query, encoder_out, encoder_out, key_padding_mask=encoder_padding_mask,
                                 static_kv=True, need_weights=True, need_head_weights=True)[1]

    def _ffn(self, x, drop):
        x = drop("activation", self.activation_fn(self.fc1(x)), self.activation_dropout)
        return drop("ffn", self.fc2(x))


class StudyDynamics(TransformerDynamics):
    """The study's form: each sub-layer's output layer-normalised, no residual;
    dh/dt = LN(FFN(LN(CrossAttn(LN(SelfAttn(h))))))."""

    def forward(
        self,
        t: Tensor,
        h: Tensor,
        *,
        drop: SolveDropout,
        self_attn_mask: Optional[Tensor] = None,
        self_padding_mask: Optional[Tensor] = None,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        stage_cache=None,
        encoder_state: Optional[dict] = None,
        attn_record: Optional[AttentionRecord] = None,
    ) -> Tensor:
        x = h
        if self.time_dependent:
            tt = t.to(h.dtype).expand(h.shape[0], h.shape[1], self.heads)
            x = torch.cat([h, tt], dim=-1)
        if self.self_attn is not None:
            x = self.self_attn_norm(drop("self_attn", self._self_attn(x, self_attn_mask, self_padding_mask, stage_cache)))
        if self.encoder_attn is not None:
            x = self.encoder_attn_norm(drop("encoder_attn", self._encoder_attn(x, encoder_out, encoder_padding_mask, encoder_state, attn_record)))
        return self.ffn_norm(self._ffn(x, drop))


OUTPUT_INITS = ("zero", "xavier")  # of PreNormDynamics' output projections


class PreNormDynamics(TransformerDynamics):
    """f(h) = the residual branch of a pre-norm layer: SelfAttn(LN h) + CrossAttn(LN .) +
    FFN(LN .), each sub-layer seeing the sum so far; dh/dt itself is not normalised.

    Output projections start at zero, so f = 0 and the flow starts as the identity
    (ODE Transformer, Li et al. 2022; Tong et al. 2025), unless ``output_init="xavier"``
    keeps fairseq's initialisation. Time dependence is not offered here.
    """

    post_norm = False
    takes_time = False
    takes_output_init = True

    def __init__(self, *args, output_init: str = "zero", **kwargs):
        super().__init__(*args, **kwargs)
        if self.time_dependent:
            raise ValueError("pre-norm dynamics do not take time-dependent input")
        if output_init not in OUTPUT_INITS:
            raise ValueError(f"output_init must be one of {OUTPUT_INITS}, got {output_init!r}")
        if output_init == "zero":
            for proj in (self.fc2, getattr(self.self_attn, "out_proj", None),
                         getattr(self.encoder_attn, "out_proj", None)):
                if proj is not None:
                    nn.init.zeros_(proj.weight)
                    nn.init.zeros_(proj.bias)

    def forward(
        self,
        t: Tensor,
        h: Tensor,
        *,
        drop: SolveDropout,
        self_attn_mask: Optional[Tensor] = None,
        self_padding_mask: Optional[Tensor] = None,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        stage_cache=None,
        encoder_state: Optional[dict] = None,
        attn_record: Optional[AttentionRecord] = None,
    ) -> Tensor:
        x, f = h, None
        if self.self_attn is not None:
            f = drop("self_attn", self._self_attn(self.self_attn_norm(x), self_attn_mask, self_padding_mask, stage_cache))
            x = h + f
        if self.encoder_attn is not None:
            a = drop("encoder_attn", self._encoder_attn(self.encoder_attn_norm(x), encoder_out, encoder_padding_mask, encoder_state, attn_record))
            f = a if f is None else f + a
            x = h + f
        a = self._ffn(self.ffn_norm(x), drop)
        return a if f is None else f + a


DYNAMICS = {"study": StudyDynamics, "prenorm": PreNormDynamics}
