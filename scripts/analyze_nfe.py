#!/usr/bin/env python3
"""Command-line main of experiments.analysis.analyze_nfe: how much work the ODE solver does per sentence, and what the flow looks like (see --help)."""

import sys

from experiments.analysis.analyze_nfe import main

if __name__ == "__main__":
    sys.exit(main())
