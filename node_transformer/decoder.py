"""fairseq wiring of the NODE decoder: fairseq's own decoder, with ODE blocks as its layers."""

from fairseq.models.transformer import TransformerDecoderBase

from .layers import NODEDecoderLayer


class NODETransformerDecoder(TransformerDecoderBase):
    """Embeddings, masks and the output projection stay fairseq's; each of the
    ``--decoder-layers`` layers (1 by default with --node-decoder) is an ODE block.

    Incremental decoding recomputes the whole prefix at every step. A per-token key/value
    cache is wrong for an ODE decoder: the self-attention keys of earlier tokens change
    along ODE time, and an adaptive solver's steps depend on the whole batch. (The study
    passed ``incremental_state`` into every function evaluation, which appended to the cache
    at each evaluation and corrupted beam search.)
    """

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return NODEDecoderLayer(cfg)

    def extract_features(self, prev_output_tokens, encoder_out, incremental_state=None,
                         full_context_alignment=False, alignment_layer=None, alignment_heads=None):
        x, extra = self.extract_features_scriptable(
            prev_output_tokens, encoder_out, None, full_context_alignment,
            alignment_layer, alignment_heads,
        )
        if incremental_state is not None:  # the caller wants the newest position only
            x = x[:, -1:, :]
            extra["attn"] = [a[:, -1:] if a is not None else None for a in extra["attn"]]
        return x, extra
