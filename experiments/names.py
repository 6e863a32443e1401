"""node_transformer's metric names (node_transformer/metric_names.py), without fairseq.

That module is the one definition, next to the task that logs the names. Importing it as
``node_transformer.metric_names`` would run the package's ``__init__``, which imports fairseq
to register the plugin: seconds of start-up for results_table.py or plot_results.py --help,
which only read logs. So it is loaded here from its file, once; when the package is already
imported (the benchmark's in-process probe, the tests), its own module is used.
"""

import importlib.util
import os
import sys

from .configs import ROOT

_NAME = "node_transformer.metric_names"


def _load():
    if "node_transformer" in sys.modules:
        return importlib.import_module(_NAME)
    spec = importlib.util.spec_from_file_location(
        "experiments._node_metric_names", os.path.join(ROOT, "node_transformer", "metric_names.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


metric_names = _load()  # consumers: from .names import metric_names as mn
