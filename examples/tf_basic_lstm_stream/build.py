"""tf_basic_lstm_stream: the tf_basic_lstm TF1 BasicLSTMCell model in step form.

Step 1 (a subprocess with TF_USE_LEGACY_KERAS=1, which the TF1 cell classes need before TensorFlow
is imported): rebuild tf_basic_lstm's graph — BasicLSTMCell(8) under dynamic_rnn, the per-step
linear readout — with a time axis of any length, restore the weights tf_basic_lstm trained from its
committed checkpoint (examples/tf_basic_lstm/checkpoint), and save it TF1-style with a Saver in
examples/tf_basic_lstm_stream/checkpoint/.
Step 2 (this process): convert checkpoint/model.meta with our TensorFlow converter and make it
stateful (converters.stateful.make_stateful): the LSTM's h and c become inputs/outputs the server
carries per sequence_id.
Run: .venv/bin/python examples/tf_basic_lstm_stream/build.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE / "checkpoint"
TRAINED = ROOT / "examples" / "tf_basic_lstm" / "checkpoint"
sys.path.insert(0, str(ROOT))

from examples.tf_basic_lstm.build import FEATURES, HIDDEN, STEPS, batch

NAME = "tf_basic_lstm_stream"
CONFIG = "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"


def rebuild() -> None:
    """The tf_basic_lstm inference graph with a dynamic time axis, weights restored from its checkpoint."""
    import numpy as np
    import tensorflow as tf

    if not (TRAINED / "model.index").exists():
        raise SystemExit(f"{TRAINED} has no trained checkpoint: run examples/tf_basic_lstm/build.py first")
    tf.compat.v1.disable_v2_behavior()
    sequence = tf.compat.v1.placeholder(tf.float32, [None, None, FEATURES], name="sequence")
    cell = tf.compat.v1.nn.rnn_cell.BasicLSTMCell(HIDDEN)
    outputs, _ = tf.compat.v1.nn.dynamic_rnn(cell, sequence, dtype=tf.float32)
    with tf.compat.v1.variable_scope("readout"):
        kernel = tf.compat.v1.get_variable("kernel", [HIDDEN, 1])
        bias = tf.compat.v1.get_variable("bias", [1])
    prediction = tf.identity(tf.tensordot(outputs, kernel, axes=1) + bias, name="prediction")
    with tf.compat.v1.Session() as session:
        # Same variable names as the training graph; its Adam slots are simply not restored.
        tf.compat.v1.train.Saver(tf.compat.v1.trainable_variables()).restore(session, str(TRAINED / "model"))
        x, y = batch(np.random.default_rng(1), 500)
        mse = float(np.mean((session.run(prediction, {sequence: x}) - y) ** 2))
        CHECKPOINT.mkdir(exist_ok=True)
        tf.compat.v1.train.Saver().save(session, str(CHECKPOINT / "model"))
    (CHECKPOINT / "checkpoint").write_text('model_checkpoint_path: "model"\nall_model_checkpoint_paths: "model"\n')
    (CHECKPOINT / "mse.txt").write_text(f"{mse:.2e}\n")
    print(f"{NAME}: restored weights, held-out MSE {mse:.2e} over {STEPS} steps")


def main() -> None:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    subprocess.run([sys.executable, __file__, "--rebuild"], env=env, check=True)
    import numpy as np

    from converters import tensorflow as tf_converter
    from converters.stateful import check_streaming, make_stateful
    from examples.build_zoo import REPOSITORY, publish
    from examples.sine_lstm_stream.usage import checked_step_form, usage

    mse = (CHECKPOINT / "mse.txt").read_text().strip()
    plain = tf_converter.convert(CHECKPOINT / "model.meta", outputs=["prediction"], opset=17, progress=print)
    stateful = make_stateful(plain.model)
    check_streaming(plain.model, stateful)
    stream = batch(np.random.default_rng(2), 3)[0]
    stream = np.concatenate([stream, batch(np.random.default_rng(3), 3)[0]], axis=1)  # 24 steps, twice training's
    result, error, pairs = checked_step_form(NAME, stateful, plain, "sequence", stream)
    publish(
        NAME, result,
        title="the TF1 BasicLSTMCell model streamed one step per request",
        description="`tf_basic_lstm`'s graph — `BasicLSTMCell(8)` under `dynamic_rnn` and a per-step linear "
        "readout — rebuilt with a time axis of any length, its trained weights restored from "
        "`examples/tf_basic_lstm/checkpoint` and saved again with `tf.train.Saver` (`checkpoint/` here), then "
        "converted from the `.meta` graph and exported in step form: the fused LSTM's `h` and `c` are extra "
        "inputs/outputs (`modelbridge.state` metadata) that the server keeps per `sequence_id` from zeros and "
        "hides from clients. Each step answers the running mean of (feature 0 − feature 1) so far.",
        inputs=[("sequence", f"[batch, time, {FEATURES}]", "FP32", "the next steps (one per request: time 1)")],
        outputs=[("prediction", "[batch, time, 1]", "FP32", "running mean of (feature 0 − feature 1)")],
        training=f"weights of `tf_basic_lstm` (Adam, 600 steps of batch 64); held-out MSE {mse} over {STEPS} steps.",
        notes=f"\nStep form check (onnxruntime): 3 sequences of 24 steps fed one step per call, carrying the "
        f"state, against each prefix run whole from zero state: max difference {error:.3g}.\n\nState pairs (input → output, "
        f"batch-first `[batch, 1, hidden]`, zeros at sequence start): "
        f"{pairs}.\n" + usage(NAME, "sequence", "prediction", FEATURES),
    )
    (REPOSITORY / NAME / "config.pbtxt").write_text(CONFIG)


if __name__ == "__main__":
    if sys.argv[1:] == ["--rebuild"]:
        rebuild()
    else:
        main()
