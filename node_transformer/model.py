"""The ``node_transformer`` model and architecture: fairseq's Transformer whose encoder
and/or decoder stack is replaced by ODE blocks, as chosen by the --node-* flags."""

from typing import Optional

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer.transformer_legacy import base_architecture

from .config import NodeArgumentError, NodeConfig, check_transformer_flags
from .decoder import NODETransformerDecoder
from .encoder import NODETransformerEncoder


@register_model("node_transformer")
class NODETransformerModel(TransformerModel):
    """``node_config``: the --node-* settings the model was built with (a NodeConfig)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        NodeConfig.add_args(parser)

    @classmethod
    def build_model(cls, args, task):
        node_transformer_base(args)
        try:
            node = cls.node_settings(args)
            check_transformer_flags(node, args)  # fairseq's flags that a NODE side would ignore
        except NodeArgumentError as e:
            # One line naming the flag, before anything is trained or written.
            raise SystemExit(f"node_transformer: error: {e}") from None
        model = super().build_model(args, task)
        model.node_config = node
        return model

    @staticmethod
    def node_settings(cfg) -> NodeConfig:
        """The checked NodeConfig of ``cfg``: the args, or the TransformerConfig fairseq makes
        of them and hands to build_encoder/build_decoder (it carries every model arg, the
        --node-* values included, as plain values)."""
        return NodeConfig.from_namespace(cfg).validate()

    @classmethod
    def build_encoder(cls, cfg, src_dict, embed_tokens, node: Optional[NodeConfig] = None):
        node = cls.node_settings(cfg) if node is None else node
        if node.node_encoder:
            return NODETransformerEncoder(TransformerConfig.from_namespace(cfg), node, src_dict, embed_tokens)
        return super().build_encoder(cfg, src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, cfg, tgt_dict, embed_tokens, node: Optional[NodeConfig] = None):
        node = cls.node_settings(cfg) if node is None else node
        if node.node_decoder:
            return NODETransformerDecoder(TransformerConfig.from_namespace(cfg), node, tgt_dict, embed_tokens)
        return super().build_decoder(cfg, tgt_dict, embed_tokens)


@register_model_architecture("node_transformer", "node_transformer")
def node_transformer_base(args):
    """The study's defaults: transformer-base sizes, one ODE block on each NODE side."""
    NodeConfig.set_defaults(args)
    if args.node_encoder:
        args.encoder_layers = getattr(args, "encoder_layers", 1)
    if args.node_decoder:
        args.decoder_layers = getattr(args, "decoder_layers", 1)
    base_architecture(args)
