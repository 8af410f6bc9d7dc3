"""The demo CNN shipped as ``l0tre_core/demo/mnist_cnn.onnx``, as a PyTorch module.

Its trained weights are ``mnist_cnn.pt`` beside this file, so benchmarks can rebuild the exact
network for tools that take PyTorch models and compare them with l0tre on the same weights::

    model = DemoCNN()
    model.load_state_dict(torch.load("benchmarks/models/mnist_cnn.pt"))
    model.eval()

Inputs are raw pixels in [0, 1], shape [N, 1, 28, 28]; outputs are logits [N, 10]. No pooling and
no batch normalisation, so every layer is a plain affine map or a ReLU, which keeps bound
propagation on it tight. ``scripts/train_demo.py`` trains and exports it.
"""

from __future__ import annotations

from torch import Tensor, nn


class DemoCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=5, stride=2),  # 28x28 -> 12x12
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=5, stride=2),  # 12x12 -> 4x4
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
