#!/usr/bin/env python3
"""Command-line main of experiments.batch: run every experiment of configs/ in order (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
from experiments.batch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
