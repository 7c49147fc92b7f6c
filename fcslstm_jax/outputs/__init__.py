"""What a study gets after segmentation: QC, volumes, flag rules, figures, the report."""
