#!/usr/bin/env python3
"""Command-line main of experiments.analysis.solver_ladder: each checkpoint under its own solver and a ladder of others, and whether it is an ODE (see --help)."""

import sys

from experiments.analysis.solver_ladder import main

if __name__ == "__main__":
    sys.exit(main())
