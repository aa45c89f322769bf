"""bigru_classifier: PyTorch bidirectional GRU sequence classifier (fused ONNX GRU, annotated gates).

Run: .venv/bin/python examples/bigru_classifier/build.py
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

FEATURES, HIDDEN, CLASSES = 4, 16, 3


class BiGruClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(FEATURES, HIDDEN, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * HIDDEN, CLASSES)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(sequence)  # [2, batch, hidden]: forward and backward final states
        return torch.softmax(self.head(torch.cat([last[0], last[1]], dim=-1)), dim=-1)


def synthetic_sequences(rng: np.random.Generator, count: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a noisy sine of frequency k+1 on channel 0; the other channels are noise."""
    labels = rng.integers(0, CLASSES, count)
    t = np.linspace(0, 2 * np.pi, length)
    phase = rng.uniform(0, 2 * np.pi, (count, 1))
    x = 0.3 * rng.standard_normal((count, length, FEATURES))
    x[:, :, 0] += np.sin((labels[:, None] + 1) * t[None, :] + phase)
    return x.astype(np.float32), labels


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, labels = synthetic_sequences(rng, 1200, 24)
    data, target = torch.from_numpy(x), torch.from_numpy(labels)
    model = BiGruClassifier()
    accuracy = train_torch_classifier(model, data, target, steps=150, batch=60, lr=1e-2)
    print(f"bigru_classifier: training accuracy {accuracy:.3f}")
    result = convert(model, inputs=[InputSpec("sequence", (None, None, FEATURES))], progress=print)
    publish(
        "bigru_classifier", result,
        title="PyTorch bidirectional GRU sequence classifier",
        description=f"nn.GRU({FEATURES} → {HIDDEN}, bidirectional, batch_first) → concat of both final states → "
        f"Linear({CLASSES}) → softmax. The GRU is one fused ONNX GRU node (direction bidirectional, "
        "linear_before_reset 1, layout 0) annotated with the PyTorch parameter behind every gate "
        "(torch order r, z, n → ONNX z, r, h). Any batch size and sequence length.",
        inputs=[("sequence", f"[batch, time, {FEATURES}]", "FP32", "a multichannel time series")],
        outputs=[("output", f"[batch, {CLASSES}]", "FP32", "class probabilities (class k: a sine of frequency k+1)")],
        training=f"Adam, 150 steps of 60 on 1200 synthetic sequences of length 24, seeds 0; training accuracy "
        f"{accuracy:.3f}.",
    )


if __name__ == "__main__":
    main()
