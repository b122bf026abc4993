"""Low-level helpers shared by every layer (file I/O, distributed info)."""
