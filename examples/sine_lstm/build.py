"""sine_lstm: a Keras 3 LSTM that predicts the next value of a sine wave from a window of past values.

The thread it comes from asked why a deep Dense net cannot extrapolate sin(x) beyond its training
range; a recurrent model that reads the recent window predicts the next value for any phase.
Run: .venv/bin/python examples/sine_lstm/build.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import keras
import numpy as np

from converters import convert
from examples.build_zoo import publish

WINDOW = 20
STEP = 0.1  # radians between samples


def windows(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of sin at random phases and amplitudes in [0.5, 1]; the target is the following sample."""
    phase = rng.uniform(0, 2 * np.pi, (count, 1))
    amplitude = rng.uniform(0.5, 1.0, (count, 1))
    t = phase + STEP * np.arange(WINDOW + 1)[None, :]
    wave = (amplitude * np.sin(t)).astype(np.float32)
    return wave[:, :WINDOW, None], wave[:, WINDOW:]


def train(steps: int | None, input_name: str, name: str) -> tuple[keras.Model, float]:
    """LSTM(16) → Dense(1) over `steps` samples (None: any number), trained on 2000 windows with seeds 0;
    returns the model and its mean squared error on 500 held-out windows. Shared with sine_lstm_stream."""
    keras.utils.set_random_seed(0)
    x, y = windows(np.random.default_rng(0), 2000)
    model = keras.Sequential([
        keras.Input((steps, 1), name=input_name),
        keras.layers.LSTM(16, name="lstm"),
        keras.layers.Dense(1, name="next_value"),
    ], name=name)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    test_x, test_y = windows(np.random.default_rng(1), 500)
    return model, float(np.mean((model.predict(test_x, verbose=0) - test_y) ** 2))


def main() -> None:
    model, mse = train(WINDOW, "window", "sine_lstm")
    print(f"sine_lstm: held-out MSE {mse:.2e}")
    result = convert(model, progress=print)
    publish(
        "sine_lstm", result,
        title="Keras 3 LSTM predicting the next sine value",
        description=f"LSTM(16) → Dense(1) reading a window of {WINDOW} consecutive samples of a sine wave "
        f"(spaced {STEP} rad, any phase, amplitude 0.5–1) and predicting the next sample — the answer to the "
        "thread asking why a deep Dense net cannot extrapolate sin. The Keras LSTM is one fused ONNX LSTM "
        "node (layout 0, sequence-major inside the graph; the model input stays batch-first).",
        inputs=[("window", f"[batch, {WINDOW}, 1]", "FP32", f"the last {WINDOW} samples, oldest first")],
        outputs=[("next_value", "[batch, 1]", "FP32", "the predicted next sample")],
        training=f"Adam (lr 0.01), 15 epochs of batch 64 on 2000 windows at random phases and amplitudes, "
        f"seeds 0; held-out MSE {mse:.2e} on 500 more.",
    )


if __name__ == "__main__":
    main()
