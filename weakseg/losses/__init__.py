"""weakseg.losses."""
