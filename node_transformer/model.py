"""The ``node_transformer`` model and architecture: fairseq's Transformer whose encoder
and/or decoder stack is replaced by ODE blocks, as chosen by the --node-* flags."""

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer.transformer_legacy import base_architecture

from .config import NodeArgumentError, NodeConfig
from .decoder import NODETransformerDecoder
from .encoder import NODETransformerEncoder

# The build's NodeConfig, on the args during build_model only (see there).
_BUILDING = "_node_config"


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
            node = NodeConfig.from_namespace(args).validate()
        except NodeArgumentError as e:
            # One line naming the flag, before anything is trained or written.
            raise SystemExit(f"node_transformer: error: {e}") from None
        # fairseq's build_model hands build_encoder/build_decoder a TransformerConfig made of
        # the args, extra keys included: the settings ride along for the build only (the
        # args are saved in checkpoints, which hold plain values).
        setattr(args, _BUILDING, node)
        try:
            model = super().build_model(args, task)
        finally:
            delattr(args, _BUILDING)
        # fairseq copies extra keys into every TransformerConfig it makes of the args: take
        # the build's copy off them, so that only ``model.node_config`` holds the settings.
        for holder in (model, model.encoder, model.decoder):
            for attr in ("cfg", "args"):
                cfg = getattr(holder, attr, None)
                if cfg is not None and _BUILDING in vars(cfg):
                    delattr(cfg, _BUILDING)
        model.node_config = node
        return model

    @classmethod
    def build_encoder(cls, cfg, src_dict, embed_tokens):
        node = getattr(cfg, _BUILDING)
        if node.node_encoder:
            return NODETransformerEncoder(TransformerConfig.from_namespace(cfg), node, src_dict, embed_tokens)
        return super().build_encoder(cfg, src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, cfg, tgt_dict, embed_tokens):
        node = getattr(cfg, _BUILDING)
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
