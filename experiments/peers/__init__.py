"""FCSLSTM side by side with peer tools (nnU-Net v2) on the same study, split and budget."""
