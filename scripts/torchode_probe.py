#!/usr/bin/env python3
"""Command-line main of experiments.analysis.torchode_probe: would torchode's per-sentence step sizes take fewer evaluations? (see --help)."""

import sys

from experiments.analysis.torchode_probe import main

if __name__ == "__main__":
    sys.exit(main())
