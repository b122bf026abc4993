"""weakseg.modules."""
