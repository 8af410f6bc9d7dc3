"""l0tre testgen application (being written)."""

__version__ = "0.1.0"
