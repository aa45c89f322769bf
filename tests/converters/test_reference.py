"""The numpy per-gate reference (one matmul per gate, from the split matrices) equals onnxruntime."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.annotations import describe_node
from converters.parity import run_onnx
from converters.reference import intermediates, run_reference
from tests.converters.helpers import recurrent_model

CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
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


def _wired_model(op: str, *, layout: int, linear_before_reset: int = 0) -> onnx.ModelProto:
    """A bidirectional node fed sequence_lens and initial states by graph inputs, in ``layout``."""
    rng = np.random.default_rng(7)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    hidden, size = 4, 3
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32) * 0.6, name) for name, shape in (
        ("W", (2, gates * hidden, size)), ("R", (2, gates * hidden, hidden)), ("B", (2, 2 * gates * hidden)))]
    seq, batch = ("seq", "batch") if layout == 0 else ("batch", "seq")
    state: list[str | int] = [2, "batch", hidden] if layout == 0 else ["batch", 2, hidden]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, size]),
              helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, state)]
    names, outputs = ["x", "W", "R", "B", "lens", "h0"], ["y", "y_h"]
    if op == "LSTM":
        inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, state))
        names.append("c0")
        outputs.append("y_c")
    attributes: dict[str, Any] = {"hidden_size": hidden, "direction": "bidirectional", "layout": layout}
    if op == "GRU":
        attributes["linear_before_reset"] = linear_before_reset
    node = helper.make_node(op, names, outputs, name=f"{op.lower()}_wired", **attributes)
    graph = helper.make_graph([node], "wired", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["d0", "d1", "d2", "d3"][: 4 if o == "y" else 3])
                               for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(("op", "layout", "lbr"), [
    ("LSTM", 0, 0), ("LSTM", 1, 0), ("GRU", 0, 0), ("GRU", 0, 1), ("GRU", 1, 0), ("GRU", 1, 1), ("RNN", 0, 0), ("RNN", 1, 0),
])
def test_bidirectional_lengths_and_initial_state_in_both_layouts(op: str, layout: int, lbr: int) -> None:
    """Past a sequence's length Y is zero and Y_h/Y_c hold its last valid step, both directions, any layout."""
    model = _wired_model(op, layout=layout, linear_before_reset=lbr)
    rng = np.random.default_rng(3)
    steps, batch = 6, 4
    lens = np.array([6, 1, 3, 5], np.int32)
    state = (2, batch, 4) if layout == 0 else (batch, 2, 4)
    feeds = {"x": rng.normal(size=(steps, batch, 3) if layout == 0 else (batch, steps, 3)).astype(np.float32),
             "lens": lens, "h0": rng.normal(size=state).astype(np.float32)}
    if op == "LSTM":
        feeds["c0"] = rng.normal(size=state).astype(np.float32)
    if layout == 0:
        expected = run_onnx(model, feeds)
    else:  # onnxruntime refuses layout 1: run the same weights as layout 0 and transpose in and out
        twin = _wired_model(op, layout=0, linear_before_reset=lbr)
        seq_major = {k: v.transpose(1, 0, 2) if k != "lens" else v for k, v in feeds.items()}
        expected = {k: v.transpose(2, 0, 1, 3) if k == "y" else v.transpose(1, 0, 2)
                    for k, v in run_onnx(twin, seq_major).items()}
    reference = run_reference(model, feeds)
    assert sorted(reference) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(reference[name], value, atol=1e-5, rtol=0, err_msg=f"{op} layout {layout}: {name}")
    y = reference["y"] if layout == 0 else reference["y"].transpose(1, 2, 0, 3)  # -> [T, D, B, H]
    assert np.all(y[1:, :, 1] == 0) and np.any(y[0, :, 1] != 0)  # batch item 1 is one step long


@pytest.fixture(scope="module")
def packed_lstm() -> onnx.ModelProto:
    """torch.onnx's own export of an nn.LSTM over a PackedSequence with (h0, c0) inputs: sequence_lens is
    computed from the `lengths` input (sorted by TopK) and the states are gathered into that order."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 4, bidirectional=True, batch_first=True)

        def forward(self, x: Any, lengths: Any, h0: Any, c0: Any) -> tuple[Any, Any, Any]:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, (h, c) = self.lstm(packed, (h0, c0))
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            return out, h, c

    torch.manual_seed(0)
    args = (torch.randn(3, 5, 3), torch.tensor([5, 2, 4]), torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Packed().eval(), args, buffer, input_names=["x", "lengths", "h0", "c0"],
                          output_names=["out", "hn", "cn"], dynamo=False, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def test_reference_runs_a_packed_sequence_lstm_export(packed_lstm: onnx.ModelProto) -> None:
    (node,) = [n for n in packed_lstm.graph.node if n.op_type == "LSTM"]
    assert node.input[4] and node.input[5] and node.input[6], "the export no longer feeds sequence_lens and states"
    rng = np.random.default_rng(4)
    feeds: dict[str, np.ndarray] = {"x": rng.normal(size=(3, 5, 3)).astype(np.float32), "lengths": np.array([2, 5, 3], np.int64),
             "h0": rng.normal(size=(2, 3, 4)).astype(np.float32), "c0": rng.normal(size=(2, 3, 4)).astype(np.float32)}
    reference = run_reference(packed_lstm, feeds)
    actual = intermediates(packed_lstm, feeds, [name for name in node.output if name])
    assert sorted(reference) == sorted(actual)
    for name, value in actual.items():
        np.testing.assert_allclose(reference[name], value, atol=1e-5, rtol=0, err_msg=name)


def test_packed_sequence_wiring_names_the_lengths_and_state_inputs(packed_lstm: onnx.ModelProto) -> None:
    (node,) = [n for n in packed_lstm.graph.node if n.op_type == "LSTM"]
    wiring = describe_node(packed_lstm, node)["wiring"]
    assert wiring["sequence_lens"]["kind"] == "computed" and wiring["sequence_lens"]["graph_inputs"] == ["lengths"]
    assert "h0" in wiring["initial_h"]["graph_inputs"] and "c0" in wiring["initial_c"]["graph_inputs"]


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_a_zero_length_sequence_ends_in_zero_state_like_onnxruntime(op: str) -> None:
    model = recurrent_model(op, direction="bidirectional", with_sequence_lens=True, with_initial_state=True)
    rng = np.random.default_rng(6)
    feeds = {"x": rng.normal(size=(4, 2, 3)).astype(np.float32), "lens": np.array([0, 3], np.int32),
             "h0": rng.normal(size=(2, 2, 4)).astype(np.float32)}
    if op == "LSTM":
        feeds["c0"] = rng.normal(size=(2, 2, 4)).astype(np.float32)
    expected, reference = run_onnx(model, feeds), run_reference(model, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(reference[name], value, atol=1e-5, rtol=0, err_msg=f"{op}: {name}")
    assert np.all(reference["y_h"][:, 0] == 0) and np.any(feeds["h0"][:, 0] != 0)
