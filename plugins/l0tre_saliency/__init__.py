"""l0tre saliency application (being written)."""

__version__ = "0.1.0"
