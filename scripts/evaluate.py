#!/usr/bin/env python3
"""Command-line main of experiments.evaluation: translate a test set with a run's best checkpoint and score it with sacreBLEU (see --help)."""

import sys

from experiments.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
