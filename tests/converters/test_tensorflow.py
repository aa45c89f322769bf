"""TF2 sources: tf.functions and SavedModels, with fused recurrent nodes matched to their variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters import UnsupportedSourceError, gates
from converters.keras_layers import UnsupportedLayerError
from converters.specs import InputSpec

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def _signature() -> list[Any]:
    return [tf.TensorSpec([None, 6, 3], tf.float32, name="x")]


def _lstm_model() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4, name="encoder"), keras.layers.Dense(2)])
    bias = model.layers[0].cell.bias
    bias.assign(np.random.default_rng(2).normal(size=bias.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def lstm_model() -> Any:
    return _lstm_model()


def _check_keras_lstm_gates(result: Any, layer: Any) -> None:
    (node,) = gates.split_gates_arrays(result.model)["nodes"]
    cell = layer.cell
    kernel, recurrent, bias = cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy()
    hidden = recurrent.shape[0]
    for k, gate in enumerate(("i", "f", "c", "o")):
        block = slice(k * hidden, (k + 1) * hidden)
        got = node["directions"][0]["gates"][gate]
        np.testing.assert_allclose(got["W"], kernel[:, block].T, atol=1e-7)
        np.testing.assert_allclose(got["R"], recurrent[:, block].T, atol=1e-7)
        np.testing.assert_allclose(got["Wb"] + got["Rb"], bias[block], atol=1e-6)
    assert node["source"]["variables"] == {"kernel": cell.kernel.path, "recurrent_kernel": cell.recurrent_kernel.path,
                                           "bias": cell.bias.path}
    assert node["source"]["gate_order"] == ["i", "f", "c", "o"]


def test_tf_function_with_keras_lstm_fuses(lstm_model: Any) -> None:
    from converters import tensorflow as tf_converter

    function = tf.function(lambda x: lstm_model(x), input_signature=_signature())
    result = tf_converter.convert(function, opset=17, atol=1e-5)
    ops = result.op_types()
    assert "LSTM" in ops and not {"Loop", "Scan"} & set(ops)
    assert result.parity.passed
    _check_keras_lstm_gates(result, lstm_model.layers[0])


def test_saved_model_directory_converts(lstm_model: Any, tmp_path: Path) -> None:
    from converters import convert

    class Served(tf.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=_signature())
        def __call__(self, x: Any) -> Any:
            return {"prediction": self.model(x)}

    tf.saved_model.save(Served(lstm_model), str(tmp_path / "saved"))
    result = convert(tmp_path / "saved")
    assert "LSTM" in result.op_types() and result.parity.passed
    assert [out.name for out in result.model.graph.output] == ["prediction"]
    _check_keras_lstm_gates(result, lstm_model.layers[0])


def test_plain_tf_function_takes_input_specs() -> None:
    from converters import tensorflow as tf_converter

    weights = tf.Variable(np.random.default_rng(0).normal(size=(3, 2)).astype("float32"))

    @tf.function
    def affine(x: Any) -> Any:
        return tf.nn.sigmoid(tf.matmul(x, weights) + 0.5)

    result = tf_converter.convert(affine, inputs=[InputSpec("x", (None, 3))], opset=17)
    assert {"MatMul", "Sigmoid"} <= set(result.op_types()) and result.parity.passed
    with pytest.raises(UnsupportedSourceError, match="input_signature"):
        tf_converter.convert(affine, opset=17)


def test_keras_gru_left_as_loop_is_refused_by_name() -> None:
    from converters import tensorflow as tf_converter

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.GRU(4, name="slow_gru")])
    function = tf.function(lambda x: model(x), input_signature=_signature())
    with pytest.raises(UnsupportedLayerError, match=r"slow_gru.*did not fuse.*keras converter"):
        tf_converter.convert(function, opset=17)


@pytest.mark.parametrize(
    ("source", "message"),
    [("missing_dir/model.meta", "does not exist"), (b"not a model", "not a TensorFlow source")],
    ids=["missing-file", "wrong-object"],
)
def test_bad_sources_are_named(source: Any, message: str) -> None:
    from converters import tensorflow as tf_converter

    with pytest.raises(UnsupportedSourceError, match=message):
        tf_converter.convert(source, opset=17)


def test_garbage_pb_is_refused(tmp_path: Path) -> None:
    from converters import tensorflow as tf_converter

    path = tmp_path / "broken.pb"
    path.write_bytes(b"\x08\x96\x01 definitely not a graph")
    with pytest.raises(UnsupportedSourceError, match="broken.pb"):
        tf_converter.convert(path, opset=17)


def test_zoo_checkpoint_converts_to_the_committed_model() -> None:
    """examples/tf_basic_lstm keeps its TF1 checkpoint; converting it again gives the committed ONNX gates."""
    import onnx

    from converters import tensorflow as tf_converter

    root = Path(__file__).resolve().parents[2]
    # The directory form finds the checkpoint through its (relative) "checkpoint" state file.
    result = tf_converter.convert(root / "examples/tf_basic_lstm/checkpoint", outputs=["prediction"], opset=17)
    committed = onnx.load(root / "server/examples/repository/tf_basic_lstm/1/model.onnx")
    assert gates.split_gates(result.model) == gates.split_gates(committed)
    (entry,) = result.annotations
    assert entry["source"]["variables"] == {"kernel": "rnn/basic_lstm_cell/kernel", "bias": "rnn/basic_lstm_cell/bias"}
    assert entry["source"]["folded"] == {"forget_bias": 1.0}


def test_training_checkpoint_outputs_are_found_without_naming_them() -> None:
    """The zoo checkpoint still holds its loss and Adam: the converter picks the prediction, not the loss."""
    from converters import convert

    root = Path(__file__).resolve().parents[2]
    result = convert(root / "examples/tf_basic_lstm/checkpoint/model.meta")
    assert [value.name for value in result.model.graph.input] == ["sequence"]
    assert [value.name for value in result.model.graph.output] == ["prediction"]
    assert "LSTM" in result.op_types()


def test_tf_keras_saved_model_with_gru_converts_through_the_keras_path(tmp_path: Path) -> None:
    """tf2onnx would leave this GRU as a Loop; a tf-keras SavedModel is reloaded as Keras and rebuilt fused."""
    tf_keras = pytest.importorskip("tf_keras")
    from converters import convert

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((6, 3)), tf_keras.layers.GRU(4, name="gru_saved"),
                                 tf_keras.layers.Dense(1)])
    model.save(str(tmp_path / "saved"), save_format="tf")
    result = convert(tmp_path / "saved")
    assert "GRU" in result.op_types() and not {"Loop", "Scan"} & set(result.op_types())
    assert result.parity.passed and result.annotations[0]["source"]["layer"] == "gru_saved"


def test_keras3_export_with_bidirectional_lstm_matches_both_directions(tmp_path: Path) -> None:
    from converters import convert

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.Bidirectional(keras.layers.LSTM(4), name="bi")])
    model.export(str(tmp_path / "exported"))
    result = convert(tmp_path / "exported")
    (entry,) = result.annotations
    assert entry["direction"] == "bidirectional" and result.parity.passed
    forward, backward = model.layers[0].forward_layer.cell, model.layers[0].backward_layer.cell
    assert entry["source"]["variables"]["forward.kernel"] == forward.kernel.path
    assert entry["source"]["variables"]["reverse.recurrent_kernel"] == backward.recurrent_kernel.path
    reverse = gates.split_gates_arrays(result.model)["nodes"][0]["directions"][1]["gates"]
    np.testing.assert_allclose(reverse["c"]["W"], backward.kernel.numpy()[:, 8:12].T, atol=1e-7)


def test_frozen_tf2_graph_with_unfusable_loop_is_refused_naming_its_scope(tmp_path: Path) -> None:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from converters import tensorflow as tf_converter

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.GRU(4, name="frozen_gru")])
    function = tf.function(lambda x: model(x), input_signature=_signature())
    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    path = tmp_path / "frozen_v2.pb"
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    with pytest.raises(UnsupportedLayerError, match=r"in loop '[^']*frozen_gru[^']*'.*did not fuse"):
        tf_converter.convert(path, opset=17)
