#!/usr/bin/env python3
"""Command-line main of experiments.analysis.depth_budgets: one checkpoint at several depths (a NODE model's solvers, a LayerDrop classic pruned at load) against classics trained at each (see --help)."""

import sys

from experiments.analysis.depth_budgets import main

if __name__ == "__main__":
    sys.exit(main())
