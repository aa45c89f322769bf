"""maxout_prelu: PyTorch MLP with a maxout layer and PReLU, a 3-class classifier on 20 features.

Run: .venv/bin/python examples/maxout_prelu/build.py
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
from examples.build_zoo import publish, train_torch_classifier


class Maxout(nn.Module):
    """max over ``pieces`` linear functions per unit: Linear -> reshape [batch, units, pieces] -> max."""

    def __init__(self, features: int, units: int, pieces: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, units * pieces)
        self.units, self.pieces = units, pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(-1, self.units, self.pieces).amax(dim=-1)


class MaxoutPrelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.maxout = Maxout(20, 32, 4)
        self.hidden = nn.Linear(32, 32)
        self.prelu = nn.PReLU(32)
        self.out = nn.Linear(32, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.out(self.prelu(self.hidden(self.maxout(features)))), dim=-1)


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 20)) * 1.5
    labels = rng.integers(0, 3, 3000)
    x = torch.from_numpy((centers[labels] + rng.normal(size=(3000, 20))).astype(np.float32))
    y = torch.from_numpy(labels)
    model = MaxoutPrelu()
    accuracy = train_torch_classifier(model, x, y, steps=400, batch=100, lr=3e-3)
    print(f"maxout_prelu: training accuracy {accuracy:.3f}")
    result = convert(model, inputs=[InputSpec("features", (None, 20))], progress=print)
    publish(
        "maxout_prelu", result,
        title="PyTorch MLP with maxout and PReLU",
        description="Maxout(20 → 32 units × 4 pieces) → Linear(32) → PReLU(32 slopes) → Linear(3) → softmax. The "
        "maxout layer comes out as MatMul/Gemm + Reshape + ReduceMax and the PReLU as ONNX PRelu.",
        inputs=[("features", "[batch, 20]", "FP32", "20 real-valued features")],
        outputs=[("output", "[batch, 3]", "FP32", "class probabilities")],
        training=f"Adam, 400 steps of 100 on 3000 samples from three Gaussian blobs in 20 dimensions, seeds 0; "
        f"training accuracy {accuracy:.3f}.",
    )


if __name__ == "__main__":
    main()
