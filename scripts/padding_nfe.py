#!/usr/bin/env python3
"""Command-line main of experiments.analysis.padding_nfe: the NFE that holding padded positions fixed saves (see --help)."""

import sys

from experiments.analysis.padding_nfe import main

if __name__ == "__main__":
    sys.exit(main())
