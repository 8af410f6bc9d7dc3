"""l0tre attack application (being written)."""

__version__ = "0.1.0"
