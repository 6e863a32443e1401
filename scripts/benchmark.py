#!/usr/bin/env python3
"""Command-line main of experiments.benchmark: the classic against the study's and this project's best NODE configurations (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
from experiments.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
