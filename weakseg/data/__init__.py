"""weakseg.data."""
