#!/usr/bin/env python3
"""Command-line main of experiments.analysis.time_generation: time beam-search generation per configuration (see --help)."""

from experiments.analysis.time_generation import main

if __name__ == "__main__":
    main()
