"""tf-keras 2.x models saved as .h5 and .keras convert like Keras 3 ones (its hard_sigmoid slope is 0.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters import gates

tf_keras = pytest.importorskip("tf_keras")


@pytest.fixture(scope="module")
def model() -> Any:
    tf_keras.utils.set_random_seed(0)
    built = tf_keras.Sequential([
        tf_keras.Input((5, 3)),
        tf_keras.layers.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True, name="lstm_hs"),
        tf_keras.layers.Bidirectional(tf_keras.layers.GRU(3, reset_after=False), name="bigru"),
        tf_keras.layers.Dense(2, activation="softmax", name="probabilities"),
    ])
    rng = np.random.default_rng(4)
    for variable in built.weights:
        if "bias" in variable.name:
            variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return built


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_tf_keras_files_convert_with_fused_nodes(model: Any, tmp_path: Path, suffix: str) -> None:
    from converters import convert

    path = tmp_path / f"model{suffix}"
    model.save(path)
    result = convert(path)
    assert [op for op in result.op_types() if op in ("LSTM", "GRU", "RNN")] == ["LSTM", "GRU"]
    assert not {"Loop", "Scan"} & set(result.op_types())
    assert result.parity.passed
    lstm, gru = result.annotations
    assert lstm["source"]["framework"] == "tf-keras" and lstm["source"]["layer"] == "lstm_hs"
    assert lstm["activations"][0] == "HardSigmoid" and lstm["activation_alpha"] == pytest.approx([0.2])
    assert gru["direction"] == "bidirectional" and gru["linear_before_reset"] == 0


def test_tf_keras_gates_match_the_weights(model: Any) -> None:
    from converters import keras as keras_converter

    result = keras_converter.convert(model, opset=17)
    split = gates.split_gates_arrays(result.model)["nodes"]
    cell = model.layers[0].cell
    kernel, recurrent, bias = cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy()
    for k, gate in enumerate(("i", "f", "c", "o")):
        got = split[0]["directions"][0]["gates"][gate]
        np.testing.assert_array_equal(got["W"], kernel[:, k * 4:(k + 1) * 4].T)
        np.testing.assert_array_equal(got["R"], recurrent[:, k * 4:(k + 1) * 4].T)
        np.testing.assert_array_equal(got["Wb"], bias[k * 4:(k + 1) * 4])
    backward = model.layers[1].backward_layer.cell
    reverse = split[1]["directions"][1]["gates"]
    np.testing.assert_array_equal(reverse["z"]["W"], backward.kernel.numpy()[:, 0:3].T)
    np.testing.assert_array_equal(reverse["h"]["Wb"], backward.bias.numpy()[6:9])
    # tf-keras numbers layer names per session (backward_gru_4 after other GRUs): compare with the variable's own.
    assert split[1]["source"]["variables"]["reverse.kernel"] == backward.kernel.name.removesuffix(":0")


def test_tf_keras_h5_seq2seq_with_masks_converts_from_the_file(tmp_path: Path) -> None:
    """Two masked inputs, encoder states into the decoder's initial_state, saved as HDF5 and loaded back."""
    from converters import convert

    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Input((None,), dtype="int32", name="source")
    target = tf_keras.Input((None,), dtype="int32", name="target")
    _, h, c = tf_keras.layers.LSTM(5, return_state=True, name="encoder")(
        tf_keras.layers.Embedding(10, 3, mask_zero=True)(source))
    decoded = tf_keras.layers.LSTM(5, return_sequences=True, name="decoder")(
        tf_keras.layers.Embedding(10, 3, mask_zero=True)(target), initial_state=[h, c])
    model = tf_keras.Model([source, target], tf_keras.layers.Dense(10, activation="softmax", name="next")(decoded))
    path = tmp_path / "seq2seq.h5"
    model.save(path)
    result = convert(path)
    assert [op for op in result.op_types() if op in ("LSTM", "GRU", "RNN")] == ["LSTM", "LSTM"]
    assert [entry["source"]["layer"] for entry in result.annotations] == ["encoder", "decoder"]
    assert all("sequence_lens" in entry["source"]["folded"] for entry in result.annotations)
    assert result.parity.passed
