#!/usr/bin/env python3
"""Command-line main of experiments.evaluation: translate a test set with a run's best checkpoint and score it with sacreBLEU (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
from experiments.evaluation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
