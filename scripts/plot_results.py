#!/usr/bin/env python3
"""Command-line main of experiments.plots: the study's figures from runs of run_experiment.py (see --help)."""

import sys

from experiments.plots import main

if __name__ == "__main__":
    sys.exit(main())
