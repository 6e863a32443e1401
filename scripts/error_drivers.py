#!/usr/bin/env python3
"""Command-line main of experiments.analysis.error_drivers: which positions and stages carry an adaptive NODE's error estimate, per checkpoint (see --help)."""

import sys

from experiments.analysis.error_drivers import main

if __name__ == "__main__":
    sys.exit(main())
