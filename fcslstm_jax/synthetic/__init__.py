"""Generated studies: the built-in BRIC-like dataset and cohorts with real-study conditions."""
