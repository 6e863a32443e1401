"""fairseq wiring of the NODE encoder: fairseq's own encoder, with ODE blocks as its layers."""

from fairseq.models.transformer import TransformerEncoderBase

from .config import NodeConfig
from .layers import NODEEncoderLayer


class NODETransformerEncoder(TransformerEncoderBase):
    """Embeddings, positions, padding and the final norm stay fairseq's; each of the
    ``--encoder-layers`` layers (1 by default with --node-encoder) is an ODE block."""

    def __init__(self, cfg, node: NodeConfig, dictionary, embed_tokens, *args, **kwargs):
        self.node_config = node  # fairseq's __init__ builds the layers
        super().__init__(cfg, dictionary, embed_tokens, *args, **kwargs)

    def build_encoder_layer(self, cfg):
        return NODEEncoderLayer(cfg, self.node_config)
