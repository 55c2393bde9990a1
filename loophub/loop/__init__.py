"""The feedback loop: production inputs of a release back into a dataset for labeling."""
