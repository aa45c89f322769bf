"""sine_lstm_stream: the sine_lstm Keras LSTM in step form — one sample in, the next-value prediction out.

The model is sine_lstm's (LSTM(16) → Dense(1), trained the same way with the same seeds) except that
its input takes any number of steps, so it can be fed one sample per request.  The conversion with
our Keras converter is made stateful (converters.stateful.make_stateful): the LSTM's h and c become
extra inputs/outputs the server carries per sequence_id.  The LSTM keeps return_sequences=False, so
each step answers the prediction after all the samples seen so far.
Run: .venv/bin/python examples/sine_lstm_stream/build.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np

from converters import convert
from converters.stateful import check_streaming, make_stateful
from examples.build_zoo import REPOSITORY, publish
from examples.sine_lstm.build import STEP, WINDOW, train
from examples.sine_lstm_stream.usage import checked_step_form, usage

NAME = "sine_lstm_stream"
CONFIG = "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"


def main() -> None:
    model, mse = train(None, "sample", NAME)
    print(f"{NAME}: held-out MSE {mse:.2e} after {WINDOW} samples")
    plain = convert(model, progress=print)
    stateful = make_stateful(plain.model)
    check_streaming(plain.model, stateful)
    # A real stream: 3 sines at random phases, 40 samples each (twice the training window), fed one by one.
    rng = np.random.default_rng(2)
    t = rng.uniform(0, 2 * np.pi, (3, 1)) + STEP * np.arange(40)[None, :]
    stream = (rng.uniform(0.5, 1.0, (3, 1)) * np.sin(t)).astype(np.float32)[:, :, None]
    result, error, pairs = checked_step_form(NAME, stateful, plain, "sample", stream)
    publish(
        NAME, result,
        title="the sine_lstm Keras LSTM streamed one sample per request",
        description=f"LSTM(16) → Dense(1), trained like `sine_lstm` (windows of {WINDOW} samples spaced {STEP} rad, "
        "any phase, amplitude 0.5–1) but with a time axis of any length, exported in step form: the LSTM's "
        "`h` and `c` are extra inputs/outputs (`modelbridge.state` metadata) that the server keeps per "
        "`sequence_id`, starting from zeros, and hides from clients. Send one sample per request with "
        "`sequence_start` on the first and `sequence_end` on the last; each answer is the predicted next "
        "sample given everything streamed so far (the LSTM has return_sequences=False). The predictions "
        f"are good from about {WINDOW} samples in, as in training.",
        inputs=[("sample", "[batch, time, 1]", "FP32", "the next samples of the wave (one per request: time 1)")],
        outputs=[("next_value", "[batch, 1]", "FP32", "the predicted sample after the last one seen")],
        training=f"Adam (lr 0.01), 15 epochs of batch 64 on 2000 windows, seeds 0; held-out MSE {mse:.2e}.",
        notes=f"\nStep form check (onnxruntime): 3 waves of 40 samples fed one sample per call, carrying the "
        f"state, against each prefix run whole from zero state: max difference {error:.3g}.\n\nState pairs (input → output, "
        f"batch-first `[batch, 1, hidden]`, zeros at sequence start): "
        f"{pairs}.\n" + usage(NAME, "sample", "next_value", 1),
    )
    (REPOSITORY / NAME / "config.pbtxt").write_text(CONFIG)


if __name__ == "__main__":
    main()
