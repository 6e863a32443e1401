"""fairseq wiring of the NODE decoder: fairseq's own decoder, with ODE blocks as its layers."""

import logging

from fairseq.models.transformer import TransformerDecoderBase

from .config import NodeConfig
from .incremental import APPROXIMATE_NOTE, GenerationNFE, decoding_mode
from .layers import NODEDecoderLayer, SideBuild

logger = logging.getLogger(__name__)


class NODETransformerDecoder(TransformerDecoderBase):
    """Embeddings, masks and the output projection stay fairseq's; each of the
    ``--decoder-layers`` layers (1 by default with --node-decoder) is an ODE block.

    Generation (fairseq's ``incremental_state``) solves only the newest target position when
    every layer allows it (NODEDecoderLayer.cacheable: the separated decoder, or a fixed-grid
    Runge-Kutta solver); otherwise, e.g. a full NODE decoder with an adaptive solver, whose
    steps depend on the whole prefix, each step recomputes the prefix. The cache equals the
    recomputation except for the separated decoder with an adaptive solver (each position
    then gets its own steps): ``node_decoding`` (a generation-time setting, e.g. through
    fairseq's ``--model-overrides``) 'auto' caches it and says so in its log line, 'exact'
    recomputes it, 'recompute' always recomputes: the reference the cache is tested against.
    """

    def __init__(self, cfg, node: NodeConfig, dictionary, embed_tokens, *args, **kwargs):
        self.node_build = SideBuild(node)  # fairseq's __init__ builds the layers
        super().__init__(cfg, dictionary, embed_tokens, *args, **kwargs)
        self.layer_norm = self.node_build.final_norm(self.layer_norm, cfg.decoder.embed_dim)
        self.decoding = decoding_mode(node)
        self.generation_nfe = GenerationNFE()
        self._announced = None

    @property
    def node_config(self) -> NodeConfig:
        return self.node_build.node

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return NODEDecoderLayer(cfg, self.node_config, self.node_build.gate(cfg.decoder, cfg.decoder.embed_dim))

    def upgrade_state_dict_named(self, state_dict, name):
        self.node_build.upgrade(state_dict, name, len(self.layers))
        return super().upgrade_state_dict_named(state_dict, name)

    def cached_decoding(self) -> bool:
        """Whether generation steps solve the newest position only (see class docstring)."""
        if self.decoding == "recompute":
            return False
        if self.decoding == "exact":
            return self.cache_exact()
        return all(layer.cacheable() for layer in self.layers)

    def cache_exact(self) -> bool:
        """Whether the cached steps equal recomputing the prefix (to rounding)."""
        return all(layer.cache_exact() for layer in self.layers)

    def extract_features(self, prev_output_tokens, encoder_out, incremental_state=None,
                         full_context_alignment=False, alignment_layer=None, alignment_heads=None):
        if incremental_state is None:
            return self.extract_features_scriptable(
                prev_output_tokens, encoder_out, None, full_context_alignment,
                alignment_layer, alignment_heads,
            )
        cached = self.cached_decoding()
        if self._announced != cached:  # once, and again if the setting changes
            self._announced = cached
            solver = self.layers[0].block.describe()
            if not cached:
                how = "recomputes the whole prefix"
            elif self.cache_exact():
                how = "solves the newest position only (cached)"
            else:
                how = f"solves the newest position only (cached, {APPROXIMATE_NOTE})"
            logger.info("NODE decoder (%s): each generation step %s", solver, how)
        if cached:
            x, extra = self.extract_features_scriptable(
                prev_output_tokens, encoder_out, incremental_state, full_context_alignment,
                alignment_layer, alignment_heads,
            )
        else:
            x, extra = self.extract_features_scriptable(
                prev_output_tokens, encoder_out, None, full_context_alignment,
                alignment_layer, alignment_heads,
            )
            x = x[:, -1:, :]  # the caller wants the newest position only
            extra["attn"] = [a[:, -1:] if a is not None else None for a in extra["attn"]]
        # One solve per layer per step, cached or not.
        nfe = sum(layer.block.solves[-1].nfe_forward for layer in self.layers)
        self.generation_nfe.add(nfe, prev_output_tokens.size(0))
        return x, extra
