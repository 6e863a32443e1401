"""Measuring programs over trained or untrained models: NFE per sentence (analyze_nfe), the
padding's effect on NFE (padding_nfe), generation and training-step timings (time_generation,
time_variants), and the torchode comparison (torchode_probe). Each module's ``main`` is the
command line of ``scripts/NAME.py``, also run as ``python -m experiments.analysis.NAME``."""
