"""weakseg.engine."""
