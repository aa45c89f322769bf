"""A corpus of real-world-shaped Keras recurrent models (Keras 3 and tf-keras), each converted once.

Every model must come out with one fused LSTM/GRU/RNN node per recurrent layer and no Loop/Scan
anywhere, match Keras on every output at 1e-4 over several batch sizes, lengths and padding patterns
(pre-, post-padded and gapped masks), and hold the layer's own weights gate by gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from converters import gates, parity
from converters.keras_graph import loops_left
from converters.result import ConversionResult
from converters.specs import InputSpec
from tests.converters.keras_gates import assert_gates_equal, expected_nodes

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

RECURRENT = {"LSTM", "GRU", "RNN"}
VOCAB = 20
ATOL = 1e-4


@dataclass(frozen=True)
class Case:
    build: Callable[[Any], Any]
    flavour: str  # "keras" (Keras 3) or "tf-keras"
    calls: int = 0  # recurrent layer calls beyond one per layer (a shared layer gives one fused node per call)
    inputs: tuple[InputSpec, ...] = ()  # what a subclassed model (no symbolic inputs) is called with


def _seed(k: Any) -> None:
    k.utils.set_random_seed(0)


def conv_lstm_forecaster(k: Any) -> Any:
    """Time-series forecaster: Conv1D -> MaxPooling1D -> LSTM -> Dense (the issue's first refusal)."""
    x = k.Input((6, 3), name="series")
    y = k.layers.Conv1D(4, 2, padding="same", activation="relu")(x)
    y = k.layers.MaxPooling1D(2)(y)
    y = k.layers.LSTM(5, name="lstm")(y)
    return k.Model(x, k.layers.Dense(1, name="forecast")(y))


def text_classifier_batchnorm(k: Any) -> Any:
    """Masked text classifier: Embedding(mask_zero) -> LSTM -> BatchNormalization -> pooling -> softmax."""
    x = k.Input((None,), dtype="int32", name="tokens")
    y = k.layers.Embedding(VOCAB, 4, mask_zero=True)(x)
    y = k.layers.LSTM(6, return_sequences=True, dropout=0.1, recurrent_dropout=0.1)(y)
    y = k.layers.BatchNormalization()(y)
    y = k.layers.GlobalAveragePooling1D()(y)
    return k.Model(x, k.layers.Dense(3, activation="softmax", name="label")(y))


def seq2seq_encoder_decoder(k: Any) -> Any:
    """Two inputs; the encoder's return_state feeds the decoder's initial_state (both masked)."""
    source = k.Input((None,), dtype="int32", name="source")
    target = k.Input((None,), dtype="int32", name="target")
    encoded = k.layers.Embedding(VOCAB, 4, mask_zero=True)(source)
    _, h, c = k.layers.LSTM(8, return_state=True, name="encoder")(encoded)
    decoded = k.layers.Embedding(VOCAB, 4, mask_zero=True)(target)
    decoded = k.layers.LSTM(8, return_sequences=True, name="decoder")(decoded, initial_state=[h, c])
    return k.Model([source, target], k.layers.TimeDistributed(k.layers.Dense(VOCAB, activation="softmax"))(decoded))


def gru_seq2seq_states_out(k: Any) -> Any:
    """GRU encoder-decoder that also returns the decoder's final state (two outputs)."""
    source = k.Input((6, 3), name="source")
    target = k.Input((5, 2), name="target")
    _, h = k.layers.GRU(6, return_state=True)(k.layers.Masking(0.0)(source))
    sequence, final = k.layers.GRU(6, return_sequences=True, return_state=True)(target, initial_state=h)
    return k.Model([source, target], [k.layers.Dense(2, name="step_out")(sequence), final])


def bilstm_sum_masking(k: Any) -> Any:
    """Masking on float features -> Bidirectional(LSTM, merge_mode='sum') -> Dense per step."""
    x = k.Input((6, 3), name="features")
    y = k.layers.Masking(0.0)(x)
    y = k.layers.Bidirectional(k.layers.LSTM(4, return_sequences=True), merge_mode="sum")(y)
    return k.Model(x, k.layers.Dense(2, name="tags")(y))


def stacked_bigru_tagger(k: Any) -> Any:
    """Stacked Bidirectional GRUs (concat) over masked tokens, then a last-step Bidirectional GRU (ave)."""
    x = k.Input((6,), dtype="int32", name="tokens")
    y = k.layers.Embedding(VOCAB, 4, mask_zero=True)(x)
    y = k.layers.Bidirectional(k.layers.GRU(4, return_sequences=True))(y)
    y = k.layers.Bidirectional(k.layers.GRU(3, reset_after=False), merge_mode="ave")(y)
    return k.Model(x, k.layers.Dense(2, activation="sigmoid", name="score")(y))


def bidirectional_states_none(k: Any) -> Any:
    """Bidirectional(LSTM, merge_mode=None, return_state=True): six outputs straight from the layer."""
    x = k.Input((6, 3), name="features")
    outputs = k.layers.Bidirectional(k.layers.LSTM(3, return_sequences=True, return_state=True),
                                     merge_mode=None)(k.layers.Masking(0.0)(x))
    return k.Model(x, list(outputs))


def bidirectional_mul_simple_rnn(k: Any) -> Any:
    x = k.Input((6, 3), name="features")
    y = k.layers.Bidirectional(k.layers.SimpleRNN(4, return_sequences=True), merge_mode="mul")(x)
    return k.Model(x, k.layers.GlobalMaxPooling1D()(y))


def explicit_mask_gru(k: Any) -> Any:
    """A mask given as a model input through the call's ``mask=`` argument; GRU reset_after=False."""
    x = k.Input((6, 3), name="features")
    mask = k.Input((6,), dtype="bool", name="mask")
    y = k.layers.GRU(5, reset_after=False, return_sequences=True)(x, mask=mask)
    return k.Model([x, mask], k.layers.Dense(1, name="value")(y))


def simple_rnn_stack_dropout(k: Any) -> Any:
    x = k.Input((None, 3), name="features")
    y = k.layers.SimpleRNN(4, activation="elu", return_sequences=True, dropout=0.2, recurrent_dropout=0.2)(x)
    y = k.layers.SimpleRNN(3, activation="relu")(y)
    return k.Model(x, k.layers.Dense(2, name="out")(k.layers.Dropout(0.3)(y)))


def go_backwards_hard_sigmoid(k: Any) -> Any:
    """go_backwards (time-reversed outputs), hard_sigmoid gates, masked by Embedding."""
    x = k.Input((6,), dtype="int32", name="tokens")
    y = k.layers.Embedding(VOCAB, 4, mask_zero=True)(x)
    y = k.layers.LSTM(4, recurrent_activation="hard_sigmoid", go_backwards=True, return_sequences=True)(y)
    return k.Model(x, y)


def unrolled_gru(k: Any) -> Any:
    x = k.Input((6,), dtype="int32", name="tokens")
    y = k.layers.Embedding(VOCAB, 4, mask_zero=True)(x)
    return k.Model(x, k.layers.GRU(4, unroll=True, name="gru")(y))


def attention_over_lstm(k: Any) -> Any:
    """LSTM states attended with dot-product Attention, concatenated, pooled."""
    x = k.Input((6,), dtype="int32", name="tokens")
    y = k.layers.Embedding(VOCAB, 4, mask_zero=True)(x)
    states = k.layers.LSTM(6, return_sequences=True)(y)
    context = k.layers.Attention()([states, states])
    y = k.layers.Concatenate()([states, context])
    return k.Model(x, k.layers.Dense(2, name="out")(k.layers.GlobalAveragePooling1D()(y)))


def rnn_cells(k: Any) -> Any:
    """Generic RNN layers over LSTMCell and GRUCell (softplus and linear activations: ONNX Softplus, Affine)."""
    x = k.Input((6, 3), name="features")
    y = k.layers.RNN(k.layers.LSTMCell(4, activation="softplus"), return_sequences=True)(x)
    return k.Model(x, k.layers.RNN(k.layers.GRUCell(3, activation="linear"))(y))


def two_branches_two_outputs(k: Any) -> Any:
    x = k.Input((6, 3), name="features")
    left = k.layers.LSTM(4, name="left")(x)
    right = k.layers.GRU(3, activation="softsign", name="right")(x)
    merged = k.layers.Concatenate()([left, right])
    return k.Model(x, [k.layers.Dense(1, name="regression")(merged),
                       k.layers.Dense(3, activation="softmax", name="classes")(right)])


def state_inputs_lstm(k: Any) -> Any:
    """Initial states as model inputs, final states as model outputs (a streaming-style step model)."""
    x = k.Input((None, 3), name="features")
    h0, c0 = k.Input((4,), name="h0"), k.Input((4,), name="c0")
    y, h, c = k.layers.LSTM(4, return_sequences=True, return_state=True)(x, initial_state=[h0, c0])
    return k.Model([x, h0, c0], [k.layers.TimeDistributed(k.layers.Dense(2))(y), h, c])


def conv_masking_bilstm_ave(k: Any) -> Any:
    x = k.Input((6, 3), name="features")
    y = k.layers.Conv1D(3, 3, padding="same")(x)
    y = k.layers.Masking(0.0)(y)
    return k.Model(x, k.layers.Bidirectional(k.layers.LSTM(3), merge_mode="ave")(y))


def bidirectional_initial_state_mask(k: Any) -> Any:
    """Bidirectional LSTM given four initial states and an explicit mask, returning sequences and states."""
    x = k.Input((6, 3), name="features")
    mask = k.Input((6,), dtype="bool", name="mask")
    states = [k.Input((3,), name=f"state_{k_}") for k_ in range(4)]
    outputs = k.layers.Bidirectional(k.layers.LSTM(3, return_sequences=True, return_state=True))(
        x, initial_state=states, mask=mask)
    return k.Model([x, mask, *states], list(outputs))


def stacked_cells_states(k: Any) -> Any:
    """RNN over StackedRNNCells (LSTMCell then GRUCell) on masked tokens, returning the states of both cells."""
    x = k.Input((None,), dtype="int32", name="tokens")
    y = k.layers.Embedding(VOCAB, 4, mask_zero=True)(x)
    outputs = k.layers.RNN([k.layers.LSTMCell(4), k.layers.GRUCell(3)], return_sequences=True, return_state=True)(y)
    return k.Model(x, tf_nest_flatten(outputs))


def tf_nest_flatten(structure: Any) -> list[Any]:
    import tensorflow as tf

    return list(tf.nest.flatten(structure))


def siamese_shared_encoder(k: Any) -> Any:
    """One nested Sequential encoder (Embedding + masked GRU) applied to two inputs, then compared."""
    encoder = k.Sequential([k.layers.Embedding(VOCAB, 4, mask_zero=True), k.layers.GRU(5)], name="encoder")
    left, right = k.Input((6,), dtype="int32", name="left"), k.Input((6,), dtype="int32", name="right")
    distance = k.layers.Subtract()([encoder(left), encoder(right)])
    return k.Model([left, right], k.layers.Dense(1, activation="sigmoid", name="same")(distance))


def subclassed_tagger(k: Any) -> Any:
    """A subclassed model (the TF tutorials' style): masked Embedding -> Bidirectional GRU (sum) -> Dense."""

    class Tagger(k.Model):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__(name="tagger")
            self.embed = k.layers.Embedding(VOCAB, 4, mask_zero=True)
            self.rnn = k.layers.Bidirectional(k.layers.GRU(4, return_sequences=True), merge_mode="sum")
            self.head = k.layers.Dense(3)

        def call(self, tokens: Any) -> Any:
            return self.head(self.rnn(self.embed(tokens)))

    model = Tagger()
    model(np.ones((1, 6), np.int32))
    return model


TOKENS = (InputSpec("tokens", (None, None), "int32"),)

CASES: dict[str, Case] = {
    "conv-lstm-forecaster": Case(conv_lstm_forecaster, "keras"),
    "text-classifier-batchnorm": Case(text_classifier_batchnorm, "keras"),
    "seq2seq-encoder-decoder": Case(seq2seq_encoder_decoder, "keras"),
    "gru-seq2seq-states-out": Case(gru_seq2seq_states_out, "keras"),
    "bilstm-sum-masking": Case(bilstm_sum_masking, "keras"),
    "stacked-bigru-tagger": Case(stacked_bigru_tagger, "keras"),
    "bidirectional-states-none": Case(bidirectional_states_none, "keras"),
    "bidirectional-mul-simple-rnn": Case(bidirectional_mul_simple_rnn, "keras"),
    "explicit-mask-gru": Case(explicit_mask_gru, "keras"),
    "simple-rnn-stack-dropout": Case(simple_rnn_stack_dropout, "keras"),
    "go-backwards-hard-sigmoid": Case(go_backwards_hard_sigmoid, "keras"),
    "unrolled-gru": Case(unrolled_gru, "keras"),
    "attention-over-lstm": Case(attention_over_lstm, "keras"),
    "rnn-cells": Case(rnn_cells, "keras"),
    "two-branches-two-outputs": Case(two_branches_two_outputs, "keras"),
    "state-inputs-lstm": Case(state_inputs_lstm, "keras"),
    "siamese-shared-encoder": Case(siamese_shared_encoder, "keras", calls=1),
    "stacked-cells-states": Case(stacked_cells_states, "keras"),
    "tf-keras-stacked-cells-states": Case(stacked_cells_states, "tf-keras"),
    "bidirectional-initial-state-mask": Case(bidirectional_initial_state_mask, "keras"),
    "subclassed-tagger": Case(subclassed_tagger, "keras", inputs=TOKENS),
    "tf-keras-subclassed-tagger": Case(subclassed_tagger, "tf-keras", inputs=TOKENS),
    "tf-keras-seq2seq-encoder-decoder": Case(seq2seq_encoder_decoder, "tf-keras"),
    "tf-keras-conv-masking-bilstm-ave": Case(conv_masking_bilstm_ave, "tf-keras"),
    "tf-keras-stacked-bigru-tagger": Case(stacked_bigru_tagger, "tf-keras"),
    "tf-keras-explicit-mask-gru": Case(explicit_mask_gru, "tf-keras"),
    "tf-keras-go-backwards-hard-sigmoid": Case(go_backwards_hard_sigmoid, "tf-keras"),
    "tf-keras-simple-rnn-stack-dropout": Case(simple_rnn_stack_dropout, "tf-keras"),
    "tf-keras-bidirectional-states-none": Case(bidirectional_states_none, "tf-keras"),
    "tf-keras-rnn-cells": Case(rnn_cells, "tf-keras"),
    "tf-keras-bilstm-sum-masking": Case(bilstm_sum_masking, "tf-keras"),
    "tf-keras-bidirectional-mul-simple-rnn": Case(bidirectional_mul_simple_rnn, "tf-keras"),
    "tf-keras-unrolled-gru": Case(unrolled_gru, "tf-keras"),
}


def _build(case: Case) -> Any:
    k = keras if case.flavour == "keras" else tf_keras
    _seed(k)
    model = case.build(k)
    rng = np.random.default_rng(1)
    for variable in model.weights:  # Keras starts biases at 0/1: random ones make the bias rows meaningful
        if "bias" in variable.name or "bias" in str(getattr(variable, "path", "")):
            variable.assign(rng.normal(size=tuple(variable.shape)).astype("float32"))
    return model


def padding(batch: int, steps: int) -> np.ndarray:
    """Real (True) steps per row, cycling: full, post-padded, pre-padded, gapped, single step at the end."""
    rows = []
    for row in range(batch):
        real = np.ones(steps, bool)
        kind = row % 5
        if kind == 1:
            real[max(1, steps // 2):] = False
        elif kind == 2:
            real[:steps // 2] = False
        elif kind == 3:
            real[1::2] = False
        elif kind == 4:
            real[:-1] = False
        rows.append(real)
    return np.array(rows)


def feeds_for(model: Any, result: ConversionResult, batch: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs with padded steps: token 0, all-zero feature steps (for Masking) or False in a bool mask."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in parity.specs_of(result.model):
        shape = [batch if k == 0 else (steps if dim is None else dim) for k, dim in enumerate(spec.shape)]
        if spec.dtype == "bool":
            feeds[spec.name] = padding(shape[0], shape[1])
        elif spec.dtype.startswith("int"):
            tokens = rng.integers(1, VOCAB, size=shape)
            feeds[spec.name] = np.where(padding(*shape), tokens, 0).astype(spec.dtype)
        else:
            value = rng.standard_normal(shape).astype(spec.dtype)
            if len(shape) == 3:
                value *= padding(shape[0], shape[1])[:, :, None]
            feeds[spec.name] = value
    return feeds


@pytest.fixture(scope="module")
def converted() -> dict[str, tuple[Any, ConversionResult]]:
    return {}


def _convert(converted: dict[str, tuple[Any, ConversionResult]], name: str) -> tuple[Any, ConversionResult]:
    if name not in converted:
        from converters import keras as keras_converter

        model = _build(CASES[name])
        converted[name] = (model, keras_converter.convert(model, inputs=list(CASES[name].inputs) or None))
    return converted[name]


def _recurrent_nodes(result: ConversionResult) -> list[Any]:
    return [node for node in result.model.graph.node if node.op_type in RECURRENT]


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_model_is_fused_exact_and_gate_faithful(converted: dict[str, Any], name: str) -> None:
    from converters import keras as keras_converter
    from converters.keras_markers import recurrent_layers

    model, result = _convert(converted, name)
    assert loops_left(result.model) == []
    layers = {layer.name: layer for layer in recurrent_layers(model)}
    per_layer = {name_: expected_nodes(layer) for name_, layer in layers.items()}
    assert len(_recurrent_nodes(result)) == sum(map(len, per_layer.values())) + CASES[name].calls
    split = gates.split_gates_arrays(result.model)["nodes"]
    assert sorted({entry["source"]["layer"] for entry in split}) == sorted(layers)
    for layer_name, cells in per_layer.items():
        entries = [entry for entry in split if entry["source"]["layer"] == layer_name]
        assert entries and len(entries) % len(cells) == 0
        for k, entry in enumerate(entries):
            assert_gates_equal(entry, cells[k % len(cells)], f"{name}/{layer_name}/{k}")
            assert entry["source"]["framework"] == CASES[name].flavour
    for batch, steps, seed in ((1, 6, 0), (5, 6, 1), (7, 4, 2)):
        feeds = feeds_for(model, result, batch, steps, seed)
        expected = keras_converter.run_keras(model, feeds, parity.specs_of(result.model))
        actual = list(parity.run_onnx(result.model, feeds).values())
        assert len(actual) == len(expected)
        for k, (got, want) in enumerate(zip(actual, expected, strict=True)):
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"{name} output {k} batch {batch}")



# Plain tf2onnx spends seconds per model converting the recurrent loops; a tf-keras twin of a Keras 3 case
# builds the same architecture, so only architectures without a Keras 3 case run it in tf-keras.
_KERAS3_BUILDERS = {case.build for case in CASES.values() if case.flavour == "keras"}
PLAIN_CASES = sorted(name for name, case in CASES.items() if case.flavour == "keras" or case.build not in _KERAS3_BUILDERS)


@pytest.mark.parametrize("name", PLAIN_CASES)
def test_what_plain_tf2onnx_converts_modelbridge_converts_too(converted: dict[str, Any], name: str) -> None:
    import tensorflow as tf
    import tf2onnx

    from converters import keras as keras_converter
    from converters.keras_markers import MARKER_DOMAIN

    model, result = _convert(converted, name)
    specs = keras_converter.input_specs(model, list(CASES[name].inputs) or None)
    signature = [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in specs]
    function = tf.function(lambda *xs: model(xs[0] if len(xs) == 1 else list(xs), training=False),
                           input_signature=signature)
    plain, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=17)
    # Our trace left the model as it was: plain tf2onnx sees Keras' own recurrent layers, not placeholders.
    assert not [node for node in plain.graph.node if node.domain == MARKER_DOMAIN]
    assert len(plain.graph.output) == len(result.model.graph.output)
    assert result.parity.passed
