"""The numpy per-gate reference (one matmul per gate, from the split matrices) equals onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from converters.parity import run_onnx
from converters.reference import run_reference
from tests.converters.helpers import recurrent_model

CASES = {
    "lstm": ("LSTM", {}, {}),
    "lstm-bidirectional-peepholes": ("LSTM", {"direction": "bidirectional", "peepholes": True}, {}),
    "lstm-clip-input-forget": ("LSTM", {}, {"clip": 0.7, "input_forget": 1}),
    "lstm-hard-sigmoid": ("LSTM", {}, {"activations": ["HardSigmoid", "Tanh", "Tanh"],
                                        "activation_alpha": [1 / 6], "activation_beta": [0.5]}),
    "lstm-reverse-states-lens": ("LSTM", {"direction": "reverse", "with_initial_state": True,
                                          "with_sequence_lens": True}, {}),
    "gru-reset-before": ("GRU", {}, {"linear_before_reset": 0}),
    "gru-reset-after-bidirectional": ("GRU", {"direction": "bidirectional", "with_initial_state": True},
                                      {"linear_before_reset": 1}),
    "gru-lens": ("GRU", {"with_sequence_lens": True}, {"linear_before_reset": 1}),
    "rnn-tanh": ("RNN", {}, {}),
    "rnn-relu-bidirectional": ("RNN", {"direction": "bidirectional"}, {"activations": ["Relu", "Relu"]}),
    "rnn-clip-lens": ("RNN", {"with_sequence_lens": True}, {"clip": 0.5}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_equals_onnxruntime(case: str) -> None:
    op, options, attributes = CASES[case]
    model = recurrent_model(op, attributes=attributes, **options)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(6, 3, 3)).astype(np.float32)}
    directions = 2 if options.get("direction") == "bidirectional" else 1
    if options.get("with_initial_state"):
        feeds["h0"] = rng.normal(size=(directions, 3, 4)).astype(np.float32)
        if op == "LSTM":
            feeds["c0"] = rng.normal(size=(directions, 3, 4)).astype(np.float32)
    if options.get("with_sequence_lens"):
        feeds["lens"] = np.array([6, 2, 4], dtype=np.int32)

    expected = run_onnx(model, feeds)
    reference = run_reference(model, feeds)

    assert sorted(reference) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(reference[name], value, atol=1e-5, rtol=0, err_msg=f"{case}: {name}")


def test_reference_notices_a_wrong_gate_order() -> None:
    """Swapping two gates' rows in W changes onnxruntime's answer but not the split's meaning: they differ."""
    model = recurrent_model("LSTM")
    feeds = {"x": np.random.default_rng(2).normal(size=(5, 2, 3)).astype(np.float32)}
    before = run_reference(model, feeds)["y"]
    weight = model.graph.initializer[0]
    assert weight.name.endswith(".W")
    array = np.frombuffer(weight.raw_data, dtype=np.float32).reshape(1, 16, 3).copy()
    array[0, 0:4], array[0, 8:12] = array[0, 8:12].copy(), array[0, 0:4].copy()  # i <-> f rows
    weight.raw_data = array.tobytes()
    assert not np.allclose(run_reference(model, feeds)["y"], before, atol=1e-3)
    np.testing.assert_allclose(run_reference(model, feeds)["y"], run_onnx(model, feeds)["y"], atol=1e-5)
