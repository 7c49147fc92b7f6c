"""The command-line tools: ``train`` and ``evaluate`` (``train.py`` / ``evaluate.py`` at the top
of the repository, or ``fcslstm-train`` / ``fcslstm-evaluate`` once installed)."""
