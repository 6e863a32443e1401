"""fairseq wiring of the NODE encoder: fairseq's own encoder, with ODE blocks as its layers."""

from fairseq.models.transformer import TransformerEncoderBase

from .config import NodeConfig
from .layers import NODEEncoderLayer, SideBuild


class NODETransformerEncoder(TransformerEncoderBase):
    """Embeddings, positions, padding and the final norm stay fairseq's; each of the
    ``--encoder-layers`` layers (1 by default with --node-encoder) is an ODE block.
    Unnormalised dynamics (pre-norm) get the final LayerNorm of a pre-norm encoder."""

    def __init__(self, cfg, node: NodeConfig, dictionary, embed_tokens, *args, **kwargs):
        self.node_build = SideBuild(node)  # fairseq's __init__ builds the layers
        super().__init__(cfg, dictionary, embed_tokens, *args, **kwargs)
        self.layer_norm = self.node_build.final_norm(self.layer_norm, cfg.encoder.embed_dim)

    @property
    def node_config(self) -> NodeConfig:
        return self.node_build.node

    def build_encoder_layer(self, cfg):
        return NODEEncoderLayer(cfg, self.node_config, self.node_build.gate(cfg.encoder, cfg.encoder.embed_dim))

    def upgrade_state_dict_named(self, state_dict, name):
        self.node_build.upgrade(state_dict, name, len(self.layers))
        return super().upgrade_state_dict_named(state_dict, name)
