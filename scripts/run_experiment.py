#!/usr/bin/env python3
"""Command-line main of experiments.runner: run one experiment of the study (see --help)."""

import sys

from experiments.runner import main

if __name__ == "__main__":
    sys.exit(main())
