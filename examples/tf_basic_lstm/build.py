"""tf_basic_lstm: a TF1 BasicLSTMCell sequence model, trained and saved TF1-style, converted from those files.

Step 1 (a subprocess, as an old TF1 script would run): build the graph with
tf.compat.v1.nn.rnn_cell.BasicLSTMCell + dynamic_rnn, train it, and save it with tf.compat.v1.train.Saver
as a checkpoint plus its .meta graph in examples/tf_basic_lstm/checkpoint/.  The TF1 cell classes
need TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, hence the separate process.
Step 2 (this process): convert checkpoint/model.meta with our TensorFlow converter.
Run: .venv/bin/python examples/tf_basic_lstm/build.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE / "checkpoint"
sys.path.insert(0, str(ROOT))

STEPS, FEATURES, HIDDEN = 12, 2, 8


def batch(rng, size):  # type: ignore[no-untyped-def]
    """Inputs in [-1, 1]; the target at step t is the running mean of (x0 - x1) over steps 0..t."""
    import numpy as np

    x = rng.uniform(-1, 1, (size, STEPS, FEATURES)).astype(np.float32)
    diff = x[:, :, 0] - x[:, :, 1]
    y = np.cumsum(diff, axis=1) / np.arange(1, STEPS + 1)[None, :]
    return x, y[:, :, None].astype(np.float32)


def train() -> None:
    """TF1 style: placeholders, a BasicLSTMCell under dynamic_rnn, Adam, a Saver."""
    import numpy as np
    import tensorflow as tf

    tf.compat.v1.disable_v2_behavior()
    tf.compat.v1.set_random_seed(0)
    rng = np.random.default_rng(0)
    sequence = tf.compat.v1.placeholder(tf.float32, [None, STEPS, FEATURES], name="sequence")
    target = tf.compat.v1.placeholder(tf.float32, [None, STEPS, 1], name="target")
    cell = tf.compat.v1.nn.rnn_cell.BasicLSTMCell(HIDDEN)
    outputs, _ = tf.compat.v1.nn.dynamic_rnn(cell, sequence, dtype=tf.float32)
    with tf.compat.v1.variable_scope("readout"):
        kernel = tf.compat.v1.get_variable("kernel", [HIDDEN, 1])
        bias = tf.compat.v1.get_variable("bias", [1], initializer=tf.compat.v1.zeros_initializer())
    prediction = tf.identity(tf.tensordot(outputs, kernel, axes=1) + bias, name="prediction")
    loss = tf.reduce_mean(tf.square(prediction - target))
    step = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss)
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        for _ in range(600):
            x, y = batch(rng, 64)
            session.run(step, {sequence: x, target: y})
        x, y = batch(np.random.default_rng(1), 500)
        mse = session.run(loss, {sequence: x, target: y})
        CHECKPOINT.mkdir(exist_ok=True)
        tf.compat.v1.train.Saver().save(session, str(CHECKPOINT / "model"))
    # The Saver records absolute paths; relative ones keep the committed checkpoint usable in any clone.
    (CHECKPOINT / "checkpoint").write_text('model_checkpoint_path: "model"\nall_model_checkpoint_paths: "model"\n')
    (CHECKPOINT / "mse.txt").write_text(f"{mse:.2e}\n")
    print(f"tf_basic_lstm: held-out MSE {mse:.2e}")


def main() -> None:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    subprocess.run([sys.executable, __file__, "--train"], env=env, check=True)
    from converters import tensorflow as tf_converter
    from examples.build_zoo import publish

    mse = (CHECKPOINT / "mse.txt").read_text().strip()
    # The saved graph still holds its loss and optimizer: name the inference output.
    result = tf_converter.convert(CHECKPOINT / "model.meta", outputs=["prediction"], opset=17, progress=print)
    publish(
        "tf_basic_lstm", result,
        title="TF1 BasicLSTMCell sequence model, from a checkpoint and its .meta graph",
        description="The classic TensorFlow 1 recipe: `BasicLSTMCell(8)` unrolled by `dynamic_rnn`, a per-step "
        "linear readout, trained with Adam and saved by `tf.train.Saver` as `checkpoint/model.meta` + "
        "`model.index` + `model.data-*` (kept next to this README). The converter restores those files, "
        "freezes the graph, recognises the cell by what its while loop computes and puts one fused ONNX LSTM in its place while tf2onnx converts the rest; the annotation names "
        "`rnn/basic_lstm_cell/kernel` and `.../bias`, TF's i, j, f, o gate order and the forget_bias of 1.0 "
        "folded into the f rows of the bias.",
        inputs=[("sequence", f"[batch, {STEPS}, {FEATURES}]", "FP32", "two features per step in [-1, 1]")],
        outputs=[("prediction", f"[batch, {STEPS}, 1]", "FP32", "running mean of (feature 0 − feature 1)")],
        training=f"Adam (lr 0.01), 600 steps of batch 64 on fresh synthetic sequences, TF seed 0 / numpy seed 0; "
        f"held-out MSE {mse} on 500 more.",
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--train"]:
        train()
    else:
        main()
