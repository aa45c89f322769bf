"""Keras 3 models, built for real, converted to ONNX with fused recurrent nodes and exact gate annotations."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from converters import gates, parity
from converters.keras_layers import UnsupportedLayerError
from converters.reference import intermediates, run_reference
from converters.result import ConversionResult
from tests.converters.keras_gates import keras_blocks

keras = pytest.importorskip("keras")
ROOT = Path(__file__).resolve().parents[2]
RECURRENT = ("LSTM", "GRU", "RNN")


def sequential(*layers: Any, shape: tuple[int | None, ...] = (6, 3)) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(shape), *layers])


def _random_biases(model: Any) -> Any:
    """Keras initialises biases to 0/1; random ones make the bias rows of the check meaningful."""
    rng = np.random.default_rng(1)
    for variable in model.weights:
        if variable.path.endswith("bias"):
            variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return model


CASES: dict[str, Callable[[], Any]] = {
    "lstm-sequences": lambda: sequential(keras.layers.LSTM(5, return_sequences=True)),
    "lstm-last": lambda: sequential(keras.layers.LSTM(5), keras.layers.Dense(1)),
    "lstm-hard-sigmoid": lambda: sequential(keras.layers.LSTM(4, recurrent_activation="hard_sigmoid")),
    "lstm-relu-no-bias": lambda: sequential(keras.layers.LSTM(4, activation="relu", use_bias=False)),
    "gru-reset-after": lambda: sequential(keras.layers.GRU(4, return_sequences=True)),
    "gru-reset-before": lambda: sequential(keras.layers.GRU(4, reset_after=False)),
    "simple-rnn": lambda: sequential(keras.layers.SimpleRNN(4, return_sequences=True)),
    "bidirectional-lstm": lambda: sequential(keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True))),
    "bidirectional-gru": lambda: sequential(keras.layers.Bidirectional(keras.layers.GRU(3, reset_after=False))),
    "time-distributed-dense": lambda: sequential(keras.layers.GRU(4, return_sequences=True),
                                                 keras.layers.TimeDistributed(keras.layers.Dense(2, activation="relu"))),
    "stacked-dynamic-time": lambda: sequential(keras.layers.LSTM(4, return_sequences=True), keras.layers.GRU(3),
                                               keras.layers.Dense(2, activation="tanh"), shape=(None, 3)),
}


@pytest.fixture(scope="module")
def converted() -> dict[str, tuple[Any, ConversionResult]]:
    from converters import keras as keras_converter

    results = {}
    for name, make in CASES.items():
        model = _random_biases(make())
        results[name] = (model, keras_converter.convert(model, opset=17, atol=1e-5))
    return results


def _recurrent_layers(model: Any) -> list[Any]:
    return [layer for layer in model.layers if type(layer).__name__ in ("LSTM", "GRU", "SimpleRNN", "Bidirectional")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_recurrent_layers_come_out_fused_and_at_parity(converted: dict[str, Any], case: str) -> None:
    model, result = converted[case]
    ops = result.op_types()
    assert not {"Loop", "Scan"} & set(ops)
    nodes = [node for node in result.model.graph.node if node.op_type in RECURRENT]
    assert len(nodes) == len(_recurrent_layers(model))
    for node in nodes:
        layout = [attr.i for attr in node.attribute if attr.name == "layout"]
        assert layout in ([], [0])
    assert result.parity.passed and result.parity.outputs[0].max_abs <= 1e-5
    stored = parity.read(result.model)
    assert stored is not None and stored.passed
    onnx.checker.check_model(result.model)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gate_split_matches_the_keras_weights(converted: dict[str, Any], case: str) -> None:
    model, result = converted[case]
    split = gates.split_gates_arrays(result.model)["nodes"]
    for layer, node in zip(_recurrent_layers(model), split, strict=True):
        parts = [layer.forward_layer, layer.backward_layer] if type(layer).__name__ == "Bidirectional" else [layer]
        assert node["source"]["layer"] == layer.name
        assert len(node["directions"]) == len(parts)
        for part, direction in zip(parts, node["directions"], strict=True):
            kind = type(part).__name__
            expected = keras_blocks(part.cell)
            for gate, blocks in expected.items():
                got = direction["gates"][gate]
                for key in ("W", "R", "Wb", "Rb"):
                    np.testing.assert_array_equal(got[key], blocks[key], err_msg=f"{case} {gate}.{key}")
                assert got["source_gate"] == ("h" if kind == "SimpleRNN" else gate)
            names = set(node["source"]["variables"].values())
            assert part.cell.kernel.path in names and part.cell.recurrent_kernel.path in names


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_per_gate_reference_equals_onnxruntime(converted: dict[str, Any], case: str) -> None:
    _, result = converted[case]
    feeds = parity.random_feeds(result.model, seed=3, dynamic=4)
    reference = run_reference(result.model, feeds)
    actual = intermediates(result.model, feeds, sorted(reference))
    for name, value in reference.items():
        np.testing.assert_allclose(actual[name], value, atol=1e-5, err_msg=name)


def test_hard_sigmoid_is_keras3_slope_one_sixth(converted: dict[str, Any]) -> None:
    _, result = converted["lstm-hard-sigmoid"]
    (entry,) = result.annotations
    assert entry["activations"] == ["HardSigmoid", "Tanh", "Tanh"]
    assert entry["activation_alpha"] == pytest.approx([1 / 6]) and entry["activation_beta"] == pytest.approx([0.5])


def test_annotations_name_source_gate_orders(converted: dict[str, Any]) -> None:
    lstm = converted["lstm-last"][1].annotations[0]["source"]
    assert lstm["framework"] == "keras" and lstm["gate_order"] == ["i", "f", "c", "o"]
    gru = converted["gru-reset-after"][1].annotations[0]
    assert gru["source"]["gate_order"] == ["z", "r", "h"] and gru["linear_before_reset"] == 1
    assert converted["gru-reset-before"][1].annotations[0]["linear_before_reset"] == 0


def test_dense_prelu_softmax_become_natural_onnx_ops() -> None:
    from converters import keras as keras_converter

    model = sequential(keras.layers.Dense(6), keras.layers.PReLU(), keras.layers.Dense(5, activation="sigmoid"),
                       keras.layers.Activation("relu"), keras.layers.Dense(3, activation="softmax"), shape=(4,))
    prelu = model.layers[1]
    prelu.alpha.assign(np.linspace(0.1, 0.6, 6, dtype="float32"))
    result = keras_converter.convert(model, opset=17)
    ops = result.op_types()
    assert ops.count("PRelu") == 1 and "Neg" not in ops
    assert {"MatMul", "Sigmoid", "Relu", "Softmax"} <= set(ops)
    assert result.parity.passed


def test_embedding_feeds_an_lstm_with_integer_tokens() -> None:
    from converters import keras as keras_converter

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((7,), dtype="int32"), keras.layers.Embedding(12, 4),
                              keras.layers.LSTM(3), keras.layers.Dense(2, activation="softmax")])
    result = keras_converter.convert(model, opset=17)
    assert "Gather" in result.op_types() and "LSTM" in result.op_types()
    assert result.model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert result.parity.passed
    masked = keras.Sequential([keras.Input((7,), dtype="int32"), keras.layers.Embedding(12, 4, mask_zero=True),
                               keras.layers.LSTM(3)])
    converted = keras_converter.convert(masked, opset=17)
    (node,) = [node for node in converted.model.graph.node if node.op_type == "LSTM"]
    assert node.input[4] and "mask" in converted.annotations[0]["source"]["folded"]


def test_keras_file_converts_through_the_framework_table(tmp_path: Path) -> None:
    from converters import convert

    model = sequential(keras.layers.LSTM(4), keras.layers.Dense(1))
    path = tmp_path / "sine.keras"
    model.save(path)
    result = convert(path)
    assert "LSTM" in result.op_types() and result.parity.passed
    reloaded = keras.models.load_model(path)
    assert result.annotations[0]["source"]["variables"]["kernel"] == reloaded.layers[0].cell.kernel.path


def test_masked_bidirectional_keras_file_converts(tmp_path: Path) -> None:
    from converters import convert

    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    states = keras.layers.Embedding(12, 4, mask_zero=True)(tokens)
    states = keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True), merge_mode="sum")(states)
    path = tmp_path / "tagger.keras"
    keras.Model(tokens, keras.layers.Dense(2, name="tags")(states)).save(path)
    result = convert(path)
    (node,) = [node for node in result.model.graph.node if node.op_type in RECURRENT]
    assert node.op_type == "GRU" and node.input[4] and result.parity.passed
    assert result.annotations[0]["direction"] == "bidirectional"


def test_cli_converts_a_keras_file(tmp_path: Path) -> None:
    model = sequential(keras.layers.Bidirectional(keras.layers.GRU(3)), keras.layers.Dense(2))
    source, target = tmp_path / "bigru.keras", tmp_path / "bigru.onnx"
    model.save(source)
    done = subprocess.run([sys.executable, "-m", "converters.cli", "convert", str(source), "-o", str(target)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "verifying" in done.stderr and "parity passed" in done.stderr
    saved = onnx.load(target)
    assert [node.op_type for node in saved.graph.node if node.op_type in RECURRENT] == ["GRU"]
    assert parity.read(saved) is not None and gates.split_gates(saved)["nodes"][0]["source"]["layer"] == model.layers[0].name


def test_layers_without_recurrence_fall_back_to_tf2onnx_with_prelu_rewritten() -> None:
    from converters import keras as keras_converter

    model = sequential(keras.layers.Dense(4), keras.layers.LayerNormalization(), keras.layers.PReLU(),
                       keras.layers.Dense(2), shape=(3,))
    model.layers[2].alpha.assign(np.array([0.1, 0.2, 0.3, 0.4], "float32"))
    result = keras_converter.convert(model, opset=17)
    assert result.parity.passed and result.annotations == []
    ops = result.op_types()
    assert "ReduceMean" in ops  # LayerNormalization came through tf2onnx
    assert ops.count("PRelu") == 1 and "Relu" not in ops


class _DoublingCell(keras.layers.Layer):  # type: ignore[misc, name-defined]
    """A custom RNN cell: no ONNX op computes it."""

    state_size = 3

    def call(self, inputs: Any, states: Any) -> Any:
        return inputs * 2.0 + states[0], [states[0] + 1.0]


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: sequential(keras.layers.LSTM(3, activation="selu")), "selu"),
        (lambda: sequential(keras.layers.RNN(_DoublingCell()), shape=(6, 3)), "_DoublingCell"),
        (lambda: sequential(keras.layers.ConvLSTM1D(2, 2), shape=(4, 5, 3)), "ConvLSTM1D"),
        (lambda: keras.Sequential([keras.Input(batch_shape=(2, 6, 3)), keras.layers.LSTM(3, stateful=True)]),
         "stateful=True"),
        (lambda: sequential(keras.layers.Bidirectional(keras.layers.LSTM(3), backward_layer=keras.layers.GRU(
            3, go_backwards=True))), "different layer types"),
    ],
    ids=["activation", "custom-cell", "conv-lstm", "stateful", "mixed-bidirectional"],
)
def test_unsupported_models_are_refused_by_name(make: Callable[[], Any], named: str) -> None:
    from converters import keras as keras_converter

    with pytest.raises(UnsupportedLayerError, match=named):
        keras_converter.convert(make(), opset=17)


def test_branching_functional_model_converts_with_one_node_per_branch() -> None:
    from converters import keras as keras_converter

    inputs = keras.Input((5, 2))
    left = keras.layers.LSTM(3, name="left_lstm")(inputs)
    right = keras.layers.GRU(3, name="right_gru")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([left, right]))
    result = keras_converter.convert(model, opset=17)
    assert sorted(op for op in result.op_types() if op in RECURRENT) == ["GRU", "LSTM"]
    assert sorted(entry["source"]["layer"] for entry in result.annotations) == ["left_lstm", "right_gru"]


def test_wrong_input_specs_name_what_the_model_expects() -> None:
    from converters import UnsupportedSourceError
    from converters import keras as keras_converter
    from converters.specs import InputSpec

    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    model = keras.Model(tokens, keras.layers.LSTM(2)(keras.layers.Embedding(9, 3, mask_zero=True)(tokens)))
    expects = r"the model expects tokens:-1,6:int32"
    with pytest.raises(UnsupportedSourceError, match=expects):
        keras_converter.convert(model, inputs=[InputSpec("tokens", (None, 7), "int32")])
    with pytest.raises(UnsupportedSourceError, match=expects):
        keras_converter.convert(model, inputs=[InputSpec("tokens", (None, 6), "float32")])
    with pytest.raises(UnsupportedSourceError, match=expects):
        keras_converter.convert(model, inputs=[InputSpec("a", (None, 6), "int32"), InputSpec("b", (2,), "int32")])
    result = keras_converter.convert(model, inputs=[InputSpec("ids", (1, 6), "int64")])
    assert [value.name for value in result.model.graph.input] == ["ids"] and result.parity.passed


def test_subclassed_model_without_specs_asks_for_them() -> None:
    from converters import UnsupportedSourceError
    from converters import keras as keras_converter

    class Forecaster(keras.Model):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.lstm = keras.layers.LSTM(3)

        def call(self, x: Any) -> Any:
            return self.lstm(x)

    model = Forecaster()
    model(np.zeros((1, 4, 2), np.float32))
    with pytest.raises(UnsupportedSourceError, match="subclassed.*--input NAME:SHAPE:DTYPE"):
        keras_converter.convert(model)


def test_dict_inputs_and_several_outputs_keep_their_names() -> None:
    from converters import keras as keras_converter

    keras.utils.set_random_seed(0)
    inputs = {"words": keras.Input((5,), dtype="int32", name="words"), "prices": keras.Input((5, 2), name="prices")}
    words = keras.layers.GRU(3, name="words_gru")(keras.layers.Embedding(9, 3, mask_zero=True)(inputs["words"]))
    prices = keras.layers.LSTM(3, name="prices_lstm")(inputs["prices"])
    both = keras.layers.Concatenate()([words, prices])
    model = keras.Model(inputs, [keras.layers.Dense(1, name="up")(both), keras.layers.Dense(2, name="mood")(words)])
    result = keras_converter.convert(model, opset=17)
    assert sorted(value.name for value in result.model.graph.input) == ["prices", "words"]
    assert [value.name for value in result.model.graph.output] == ["up", "mood"]
    assert sorted(op for op in result.op_types() if op in RECURRENT) == ["GRU", "LSTM"] and result.parity.passed
