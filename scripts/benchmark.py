#!/usr/bin/env python3
"""Command-line main of experiments.benchmark: the classic against the study's and this project's best NODE configurations (see --help)."""

import sys

from experiments.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
