#!/usr/bin/env python3
"""Command-line main of node_transformer.export: write a trained model's directory that users can move (see --help)."""

import sys

from node_transformer.export import main

if __name__ == "__main__":
    sys.exit(main())
