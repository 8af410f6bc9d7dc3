"""l0tre design application (being written)."""

__version__ = "0.1.0"
