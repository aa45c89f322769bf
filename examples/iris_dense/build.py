"""iris_dense: Keras Sequential Dense(6, relu) -> Dense(6, relu) -> Dense(3, softmax) on 3 features.

Trained briefly on synthetic iris-like data (three Gaussian clusters in 3-D), seeds fixed.
Run: .venv/bin/python examples/iris_dense/build.py
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

# Per-class feature means (petal length, petal width, sepal length in cm), loosely the iris species.
CENTRES = np.array([[1.5, 0.25, 5.0], [4.3, 1.3, 5.9], [5.5, 2.0, 6.6]], np.float32)


def synthetic_iris(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 3, count)
    features = CENTRES[labels] + rng.normal(scale=[0.3, 0.15, 0.4], size=(count, 3)).astype(np.float32)
    return features.astype(np.float32), labels


def main() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    features, labels = synthetic_iris(rng, 600)
    model = keras.Sequential([
        keras.Input((3,), name="features"),
        keras.layers.Dense(6, activation="relu", name="hidden_1"),
        keras.layers.Dense(6, activation="relu", name="hidden_2"),
        keras.layers.Dense(3, activation="softmax", name="species"),
    ], name="iris_dense")
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(features, labels, epochs=40, batch_size=32, verbose=0)
    test_x, test_y = synthetic_iris(np.random.default_rng(1), 300)
    accuracy = float((model.predict(test_x, verbose=0).argmax(axis=1) == test_y).mean())
    print(f"iris_dense: held-out accuracy {accuracy:.3f}")
    result = convert(model, progress=print)
    publish(
        "iris_dense", result,
        title="Keras dense classifier on 3 features",
        description="The Keras Sequential model from the thread about serving a small iris classifier: "
        "Dense(6, relu) → Dense(6, relu) → Dense(3, softmax) on three features. Each Dense becomes an ONNX "
        "MatMul + Add, followed by Relu or Softmax.",
        inputs=[("features", "[batch, 3]", "FP32", "petal length, petal width, sepal length (cm)")],
        outputs=[("species", "[batch, 3]", "FP32", "class probabilities (setosa-, versicolor-, virginica-like)")],
        training=f"Adam (lr 0.02), 40 epochs of batch 32 on 600 synthetic samples (three Gaussian clusters "
        f"around iris-like species means), seeds 0; held-out accuracy {accuracy:.3f} on 300 more.",
    )


if __name__ == "__main__":
    main()
