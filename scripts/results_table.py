#!/usr/bin/env python3
"""Command-line main of experiments.reports: a markdown table of runs beside the study's numbers (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
from experiments.reports import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
