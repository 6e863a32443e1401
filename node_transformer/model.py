"""The ``node_transformer`` model and architecture: fairseq's Transformer whose encoder
and/or decoder stack is replaced by ODE blocks, as chosen by the --node-* flags."""

import logging
from contextvars import ContextVar
from typing import Optional

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer.transformer_legacy import base_architecture

from .config import METHOD_SPECIFIC, NodeArgumentError, NodeConfig, check_transformer_flags
from .decoder import NODETransformerDecoder
from .encoder import NODETransformerEncoder

logger = logging.getLogger(__name__)

# The settings build_model checked, for build_encoder / build_decoder, which fairseq calls
# with the model's config alone (a model loaded from a checkpoint is checked differently).
_BUILDING: ContextVar[Optional[NodeConfig]] = ContextVar("node_transformer_building", default=None)


@register_model("node_transformer")
class NODETransformerModel(TransformerModel):
    """``node_config``: the --node-* settings the model was built with (a NodeConfig)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        NodeConfig.add_args(parser)

    @classmethod
    def build_model(cls, args, task):
        """``task.node_loading_checkpoint`` (set by node_translation for fairseq-generate,
        -interactive, -validate and the hub): the solver is the one to run, perhaps given by
        --model-overrides, not the one the model was trained with; settings that only shape
        training are not checked, and method-specific ones the method does not take are
        left out, with a log line."""
        node_transformer_base(args)
        loading = bool(getattr(task, "node_loading_checkpoint", False))
        try:
            node = NodeConfig.from_namespace(args)
            if loading:
                node = cls._for_inference(node, args)
            node.validate(training=not loading)
            check_transformer_flags(node, args)  # fairseq's flags that a NODE side would ignore
        except NodeArgumentError as e:
            # One line naming the flag, before anything is trained or written.
            raise SystemExit(f"node_transformer: error: {e}") from None
        token = _BUILDING.set(node)
        try:
            model = super().build_model(args, task)
        finally:
            _BUILDING.reset(token)
        model.node_config = node
        return model

    @staticmethod
    def _for_inference(node: NodeConfig, args) -> NodeConfig:
        node, dropped = node.for_inference()
        if dropped:
            logger.info("solving with --node-method %s: left out %s, which %s not apply to it",
                        node.node_method, ", ".join(dropped), "does" if len(dropped) == 1 else "do")
            for name, _ in METHOD_SPECIFIC:
                setattr(args, name, getattr(node, name))  # the model's config says what it runs
        return node

    @staticmethod
    def node_settings(cfg) -> NodeConfig:
        """The checked NodeConfig of ``cfg``: the args, or the TransformerConfig fairseq makes
        of them and hands to build_encoder/build_decoder (it carries every model arg, the
        --node-* values included, as plain values)."""
        return NodeConfig.from_namespace(cfg).validate()

    @classmethod
    def build_encoder(cls, cfg, src_dict, embed_tokens, node: Optional[NodeConfig] = None):
        node = node or _BUILDING.get() or cls.node_settings(cfg)
        if node.node_encoder:
            return NODETransformerEncoder(TransformerConfig.from_namespace(cfg), node, src_dict, embed_tokens)
        return super().build_encoder(cfg, src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, cfg, tgt_dict, embed_tokens, node: Optional[NodeConfig] = None):
        node = node or _BUILDING.get() or cls.node_settings(cfg)
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
