"""weakseg.models."""
