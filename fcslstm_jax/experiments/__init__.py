"""Experiments that reproduce the paper's comparisons (run with ``python -m``)."""
