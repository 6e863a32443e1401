#!/usr/bin/env python3
"""Command-line main of experiments.batch: run every experiment of configs/ in order (see --help)."""

import sys

from experiments.batch import main

if __name__ == "__main__":
    sys.exit(main())
