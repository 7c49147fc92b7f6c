"""A study on disk -> arrays: NIfTI, layout, protocols, grids, subjects, sequences, patches."""
