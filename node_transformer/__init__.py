"""NODE-Transformer: a fairseq plugin. ``--user-dir node_transformer`` imports this package,
which registers the ``node_transformer`` model and the ``node_translation`` task."""

from . import fairseq_fixes  # noqa: F401  (checkpoint allow-list, no dropped batches)
from . import model, task  # noqa: F401  (registration)
from .hub import NODEHubInterface, from_pretrained  # noqa: F401  (Python entry point, see README)
