"""gru_stack_stream: a PyTorch 2-layer (stacked) GRU that denoises a signal as it streams in.

nn.GRU(1 → 16, num_layers=2, batch_first) → Linear(1) on every step, trained to recover a clean sine
from a noisy one.  Our PyTorch converter emits one fused ONNX GRU node per layer; make_stateful gives
each layer its own h pair, so the server carries both layers' state per sequence_id.  (A
bidirectional GRU is refused: its reverse direction needs the future.)
Run: .venv/bin/python examples/gru_stack_stream/build.py
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
from converters.stateful import check_streaming, make_stateful
from examples.build_zoo import REPOSITORY, publish
from examples.sine_lstm_stream.usage import checked_step_form, usage

NAME = "gru_stack_stream"
HIDDEN, LAYERS, LENGTH, NOISE = 16, 2, 32, 0.3
CONFIG = "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"


class GruStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(1, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(noisy)[0])


def signals(rng: np.random.Generator, count: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """A sine at a random phase, frequency and amplitude (the target) and the same plus Gaussian noise."""
    t = np.arange(length)[None, :]
    clean = rng.uniform(0.5, 1.0, (count, 1)) * np.sin(rng.uniform(0.1, 0.3, (count, 1)) * t
                                                       + rng.uniform(0, 2 * np.pi, (count, 1)))
    noisy = clean + NOISE * rng.standard_normal(clean.shape)
    return noisy.astype(np.float32)[:, :, None], clean.astype(np.float32)[:, :, None]


def main() -> None:
    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in signals(np.random.default_rng(0), 1024, LENGTH))
    model = GruStack()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(200):
        index = slice((step * 64) % 1024, (step * 64) % 1024 + 64)
        loss = nn.functional.mse_loss(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_x, test_y = signals(np.random.default_rng(1), 256, LENGTH)
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(torch.from_numpy(test_x)), torch.from_numpy(test_y)))
    print(f"{NAME}: held-out MSE {mse:.3e} (noise alone: {NOISE ** 2:.3e})")
    plain = convert(model, inputs=[InputSpec("noisy", (None, None, 1))], progress=print)
    stateful = make_stateful(plain.model)
    check_streaming(plain.model, stateful)
    stream = signals(np.random.default_rng(2), 3, 48)[0]
    result, error, pairs = checked_step_form(NAME, stateful, plain, "noisy", stream)
    publish(
        NAME, result,
        title="PyTorch stacked GRU denoising a signal as it streams in",
        description=f"nn.GRU(1 → {HIDDEN}, num_layers={LAYERS}, batch_first) → Linear(1) per step: fed a noisy "
        f"sine (noise σ {NOISE}), it answers the clean value of each sample. Each layer is one fused ONNX GRU "
        "node (linear_before_reset 1, layout 0), exported in step form: every layer's `h` is an extra "
        "input/output pair (`modelbridge.state` metadata) that the server keeps per `sequence_id` from zeros "
        "and hides from clients. Send one or more samples per request; the answers equal those of the whole "
        "sequence sent at once.",
        inputs=[("noisy", "[batch, time, 1]", "FP32", "the next noisy samples (one per request: time 1)")],
        outputs=[("output", "[batch, time, 1]", "FP32", "the denoised samples")],
        training=f"Adam (lr 0.01), 200 steps of batch 64 on 1024 synthetic signals of length {LENGTH}, seeds 0; "
        f"held-out MSE {mse:.3e} (the noise alone is {NOISE ** 2:.3e}).",
        notes=f"\nStep form check (onnxruntime): 3 signals of 48 samples fed one sample per call, carrying the "
        f"state, against each prefix run whole from zero state: max difference {error:.3g}.\n\nState pairs (input → output, "
        f"batch-first `[batch, 1, hidden]`, zeros at sequence start): "
        f"{pairs}.\n" + usage(NAME, "noisy", "output", 1),
    )
    (REPOSITORY / NAME / "config.pbtxt").write_text(CONFIG)


if __name__ == "__main__":
    main()
