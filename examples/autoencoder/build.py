"""autoencoder: PyTorch Linear/ReLU autoencoder 784 -> 512 -> 512 -> 10 -> 512 -> 512 -> 784.

Trained briefly on synthetic 28x28 "digits" (ten random blurred stroke prototypes plus noise).
Run: .venv/bin/python examples/autoencoder/build.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from torch import nn

from converters import InputSpec, convert
from examples.build_zoo import publish


class Autoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        self.decoder = nn.Sequential(
            nn.Linear(10, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 784), nn.Sigmoid()
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.encoder(image)))


def synthetic_images(rng: np.random.Generator, count: int) -> np.ndarray:
    """Ten smooth random prototypes in [0, 1]; every sample is one of them plus pixel noise."""
    prototypes = rng.random((10, 7, 7)).repeat(4, axis=1).repeat(4, axis=2).reshape(10, 784)
    labels = rng.integers(0, 10, count)
    images = prototypes[labels] + 0.05 * rng.standard_normal((count, 784))
    return np.clip(images, 0.0, 1.0).astype(np.float32)


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = torch.from_numpy(synthetic_images(rng, 2048))
    model = Autoencoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(300):
        batch = data[(step * 64) % 2048:(step * 64) % 2048 + 64]
        loss = nn.functional.mse_loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = float(nn.functional.mse_loss(model(data), data))
    print(f"autoencoder: reconstruction MSE {final:.4f}")
    result = convert(model, inputs=[InputSpec("image", (None, 784))], progress=print)
    publish(
        "autoencoder", result,
        title="PyTorch Linear/ReLU autoencoder",
        description="A dense autoencoder 784 → 512 → 512 → 10 → 512 → 512 → 784 with ReLU between layers and a "
        "sigmoid on the reconstruction, as in the thread that asked how to serve a PyTorch autoencoder "
        "to other languages. Every Linear becomes an ONNX Gemm.",
        inputs=[("image", "[batch, 784]", "FP32", "a flattened 28×28 image with pixels in [0, 1]")],
        outputs=[("output", "[batch, 784]", "FP32", "the reconstruction, pixels in [0, 1]")],
        training=f"Adam, 300 steps of 64 on 2048 synthetic 28×28 images (ten smooth random prototypes plus "
        f"noise), seeds 0; final reconstruction MSE {final:.4f}.",
        notes="\n**Size exception.** The issue asks for files under 1 MB; this architecture has 1.34 M "
        "parameters, which is 5.4 MB in float32 (2.7 MB even in float16, 1.3 MB in int8). We keep the "
        "architecture the thread describes and float32 weights, so the parity check holds at the default "
        "1e-4 and the browser runs exactly what the server runs, and accept the larger file.\n",
    )


if __name__ == "__main__":
    main()
