#!/usr/bin/env python3
"""Command-line main of experiments.reports: a markdown table of runs beside the study's numbers (see --help)."""

import sys

from experiments.reports import main

if __name__ == "__main__":
    sys.exit(main())
