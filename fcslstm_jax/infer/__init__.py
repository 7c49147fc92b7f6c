"""Segmentation with trained runs: flips, ensembles, sliding windows, whole studies."""
