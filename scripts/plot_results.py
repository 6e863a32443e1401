#!/usr/bin/env python3
"""Command-line main of experiments.plots: the study's figures from runs of run_experiment.py (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
from experiments.plots import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
