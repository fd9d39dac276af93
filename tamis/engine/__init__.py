"""The columnar core, the checks and the pipeline."""
