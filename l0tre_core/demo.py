"""The demo model and data that ship inside the package."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).parent / "demo"


def demo_model_path() -> Path:
    return DEMO_DIR / "mnist_cnn.onnx"


def demo_data_path() -> Path:
    return DEMO_DIR / "mnist_heldout_500.npz"
