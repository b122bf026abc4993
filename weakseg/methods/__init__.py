"""weakseg.methods."""
