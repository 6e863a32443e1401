#!/usr/bin/env python3
"""Command-line main of experiments.study: reproduce one experiment of the study end to end (see --help)."""

import sys

from experiments.study import main

if __name__ == "__main__":
    sys.exit(main())
