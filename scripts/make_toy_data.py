#!/usr/bin/env python3
"""Command-line main of experiments.toy_data: write the generated toy translation task (see --help)."""

from experiments.toy_data import main

if __name__ == "__main__":
    main()
