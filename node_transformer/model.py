"""The ``node_transformer`` model and architecture: fairseq's Transformer whose encoder
and/or decoder stack is replaced by ODE blocks, as chosen by the --node-* flags."""

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer.transformer_legacy import base_architecture

from .decoder import NODETransformerDecoder
from .encoder import NODETransformerEncoder
from .options import NodeArgumentError, add_node_args, check_node_args, set_node_defaults


@register_model("node_transformer")
class NODETransformerModel(TransformerModel):
    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_node_args(parser)

    @classmethod
    def build_model(cls, args, task):
        node_transformer_base(args)
        try:
            check_node_args(args)
        except NodeArgumentError as e:
            # One line naming the flag, before anything is trained or written.
            raise SystemExit(f"node_transformer: error: {e}") from None
        return super().build_model(args, task)

    @classmethod
    def build_encoder(cls, cfg, src_dict, embed_tokens):
        if getattr(cfg, "node_encoder", False):
            return NODETransformerEncoder(TransformerConfig.from_namespace(cfg), src_dict, embed_tokens)
        return super().build_encoder(cfg, src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, cfg, tgt_dict, embed_tokens):
        if getattr(cfg, "node_decoder", False):
            return NODETransformerDecoder(TransformerConfig.from_namespace(cfg), tgt_dict, embed_tokens)
        return super().build_decoder(cfg, tgt_dict, embed_tokens)


@register_model_architecture("node_transformer", "node_transformer")
def node_transformer_base(args):
    """The study's defaults: transformer-base sizes, one ODE block on each NODE side."""
    set_node_defaults(args)
    if args.node_encoder:
        args.encoder_layers = getattr(args, "encoder_layers", 1)
    if args.node_decoder:
        args.decoder_layers = getattr(args, "decoder_layers", 1)
    base_architecture(args)
