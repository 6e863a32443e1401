"""NODE-Transformer: a fairseq plugin. ``--user-dir node_transformer`` imports this package,
which registers the ``node_transformer`` model and the ``node_translation`` task."""

from . import checkpoints  # noqa: F401  (allow-lists what fairseq checkpoints hold)
from . import model, task  # noqa: F401  (registration)
from .hub import NODEHubInterface, from_pretrained  # noqa: F401  (Python entry point, see README)
