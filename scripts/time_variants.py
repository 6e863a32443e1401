#!/usr/bin/env python3
"""Command-line main of experiments.analysis.time_variants: time training steps of each model variant (see --help)."""

from experiments.analysis.time_variants import main

if __name__ == "__main__":
    main()
