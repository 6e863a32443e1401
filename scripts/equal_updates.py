#!/usr/bin/env python3
"""Command-line main of experiments.equal_updates: classic layers, NODE steps and learned RK blocks at equal parameters and updates (see --help)."""

import sys

from experiments.equal_updates import main

if __name__ == "__main__":
    sys.exit(main())
