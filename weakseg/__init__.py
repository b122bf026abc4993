"""weakseg: weakly supervised semantic segmentation toolkit."""

__version__ = "0.1.0"
