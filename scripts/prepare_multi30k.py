#!/usr/bin/env python3
"""Command-line main of experiments.multi30k: prepare Multi30k En-De for fairseq (check, joint BPE, binarize) (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
from experiments.multi30k import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
