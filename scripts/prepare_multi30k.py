#!/usr/bin/env python3
"""Command-line main of experiments.multi30k: prepare Multi30k En-De for fairseq (check, joint BPE, binarize) (see --help)."""

import sys

from experiments.multi30k import main

if __name__ == "__main__":
    sys.exit(main())
