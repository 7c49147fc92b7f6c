"""Experiments outside the package: not imported by train.py, evaluate.py or the library."""
