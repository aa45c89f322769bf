"""--stateful: the step form carries recurrent state through graph inputs/outputs the server feeds back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from converters import convert
from converters.annotations import read_annotations, validate
from converters.parity import run_onnx
from converters.pytorch import convert as convert_torch
from converters.specs import InputSpec
from converters.stateful import StatefulError, check_streaming, make_stateful, state_pairs


class Stacked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 5, num_layers=2, batch_first=True)
        self.gru = nn.GRU(5, 3, batch_first=True)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.lstm(x)[0])[0])


@pytest.fixture(scope="module")
def stateful_model() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(8)
    model = Stacked().eval()
    result = convert(model, inputs=[InputSpec("x", (None, None, 2))], stateful=True, exporter="torchscript")
    return model, result.model


def test_state_pairs_are_batch_major_inputs_and_outputs(stateful_model: tuple[nn.Module, onnx.ModelProto]) -> None:
    _, model = stateful_model
    pairs = state_pairs(model)
    assert [pair["input"] for pair in pairs] == ["state_0_h", "state_0_c", "state_1_h", "state_1_c", "state_2_h"]
    inputs = {value.name: value for value in model.graph.input}
    outputs = {value.name for value in model.graph.output}
    for pair in pairs:
        dims = inputs[pair["input"]].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and dims[1].dim_value == 1 and dims[2].dim_value in (5, 3)
        assert pair["output"] in outputs
    entries = read_annotations(model)
    for entry in entries:
        validate(entry)
    assert entries[2]["op"] == "GRU" and entries[2]["state"]["initial_h"]["input"] == "state_2_h"
    assert json.loads({p.key: p.value for p in model.metadata_props}["modelbridge.state"]) == pairs


def test_streaming_step_by_step_equals_torch_on_the_whole_sequence(
    stateful_model: tuple[nn.Module, onnx.ModelProto],
) -> None:
    source, model = stateful_model
    x = np.random.default_rng(1).normal(size=(3, 7, 2)).astype(np.float32)
    state = {pair["input"]: np.zeros((3, 1, 5 if pair["input"].startswith(("state_0", "state_1")) else 3), np.float32)
             for pair in state_pairs(model)}
    steps = []
    for t in range(7):
        out = run_onnx(model, {"x": x[:, t:t + 1], **state})
        state = {pair["input"]: out[pair["output"]] for pair in state_pairs(model)}
        steps.append(out["output"])
    expected = source(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.concatenate(steps, axis=1), expected, atol=1e-5)


def test_bidirectional_cannot_stream() -> None:
    torch.manual_seed(9)
    result = convert_torch(_BiGru(), inputs=[InputSpec("x", (None, None, 2))], exporter="torchscript")
    with pytest.raises(StatefulError, match=r"GRU node '.*' \(layer 'gru'\) runs bidirectional: it reads the "
                                            "sequence backwards, and a reverse direction needs the future"):
        make_stateful(result.model)


class _BiGru(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, 3, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[1]


def test_model_without_recurrence_is_refused() -> None:
    result = convert_torch(nn.Linear(2, 2), inputs=[InputSpec("x", (None, 2))], exporter="torchscript")
    with pytest.raises(StatefulError, match="no LSTM/GRU/RNN node"):
        make_stateful(result.model)


def test_fixed_time_length_is_refused_naming_the_input() -> None:
    torch.manual_seed(11)
    model = Stacked().eval()
    result = convert_torch(model, inputs=[InputSpec("window", (None, 20, 2))], exporter="torchscript")
    with pytest.raises(StatefulError, match="input 'window' has a fixed length 20 on time axis 1"):
        check_streaming(result.model, make_stateful(result.model))


# --- hand-built ONNX graphs: what make_stateful replaces and what it refuses --------------------------

HIDDEN = 3


def _lstm_graph(*, layout: int = 0, direction: str = "forward", initial_h: str = "", lengths: str = "",
                dtype: type = np.float32, extra_nodes: list | None = None,
                extra_inits: list | None = None, extra_inputs: list | None = None) -> onnx.ModelProto:
    """x [2, time, 3] (batch first, like every converted model) → LSTM(hidden 3) → y; initial_h as given."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.normal(size=shape) * 0.5).astype(dtype), name)
             for name, shape in (("W", (1, 4 * HIDDEN, 3)), ("R", (1, 4 * HIDDEN, HIDDEN)), ("B", (1, 8 * HIDDEN)))]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [*(extra_nodes or [])]
    if layout == 0:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("LSTM", ["x_time_major" if layout == 0 else "x", "W", "R", "B", lengths, initial_h],
                                  ["y"], name="lstm_node", hidden_size=HIDDEN, layout=layout,
                                  direction=direction))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", elem, [2, "time", 3]), *(extra_inputs or [])],
        [helper.make_tensor_value_info("y", elem, ["time", 1, 2, HIDDEN] if layout == 0
                                       else [2, "time", 1, HIDDEN])],
        [*inits, *(extra_inits or [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_a_constant_zero_initial_state_is_replaced_and_streams() -> None:
    from onnx import numpy_helper

    model = _lstm_graph(initial_h="h_zero", extra_inits=[numpy_helper.from_array(np.zeros((1, 2, HIDDEN), np.float32),
                                                                                  "h_zero")])
    stateful = make_stateful(model)
    assert [value.name for value in stateful.graph.input] == ["x", "state_0_h", "state_0_c"]
    assert "h_zero" not in {init.name for init in stateful.graph.initializer} | {
        name for node in stateful.graph.node for name in node.input}
    assert check_streaming(model, stateful) <= 1e-5


@pytest.mark.parametrize("value", [0.25, -1.0])
def test_a_non_zero_constant_initial_state_is_refused(value: float) -> None:
    from onnx import numpy_helper

    model = _lstm_graph(initial_h="h_const", extra_inits=[
        numpy_helper.from_array(np.full((1, 2, HIDDEN), value, np.float32), "h_const")])
    with pytest.raises(StatefulError, match=r"LSTM node 'lstm_node': initial_h is a non-zero constant \(tensor "
                                            r"'h_const'.*starts every sequence from zeros"):
        make_stateful(model)


def test_an_initial_state_computed_from_the_input_is_refused() -> None:
    from onnx import helper

    mean = helper.make_node("ReduceMean", ["x", "axes"], ["h_mean"], name="mean_of_x", keepdims=1)
    axes = onnx.numpy_helper.from_array(np.array([0], np.int64), "axes")
    model = _lstm_graph(initial_h="h_mean", extra_nodes=[mean], extra_inits=[axes])
    with pytest.raises(StatefulError, match=r"LSTM node 'lstm_node': initial_h is tensor 'h_mean' \(made by "
                                            r"ReduceMean node 'mean_of_x'\), computed from input 'x'"):
        make_stateful(model)


def test_an_initial_state_fed_as_a_graph_input_is_refused() -> None:
    from onnx import TensorProto, helper

    model = _lstm_graph(initial_h="h0", extra_inputs=[helper.make_tensor_value_info("h0", TensorProto.FLOAT,
                                                                                   [1, 2, HIDDEN])])
    with pytest.raises(StatefulError, match="'lstm_node' already takes initial_h from graph input 'h0'"):
        make_stateful(model)


def test_a_zero_state_sized_from_the_input_shape_is_replaced() -> None:
    """What exporters emit for 'no initial state': Expand(0, [1, batch, hidden]) with batch from Shape(x)."""
    from onnx import helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(value, np.int64), name) for name, value in
              (("one", [1]), ("hidden", [HIDDEN]), ("b_start", [0]), ("b_end", [1]))]
    consts.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    nodes = [helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Slice", ["x_shape", "b_start", "b_end"], ["batch"]),
             helper.make_node("Concat", ["one", "batch", "hidden"], ["h_shape"], axis=0),
             helper.make_node("Expand", ["zero", "h_shape"], ["h_init"], name="zeros_like_batch")]
    model = _lstm_graph(initial_h="h_init", extra_nodes=nodes, extra_inits=consts)
    stateful = make_stateful(model)
    assert {node.op_type for node in stateful.graph.node} == {"LSTM", "Transpose"}, "the dead zero builder is gone"
    assert check_streaming(model, stateful) <= 1e-5


def test_the_state_has_the_element_type_of_the_weights() -> None:
    """(onnxruntime's CPU LSTM has no double kernel, so this checks the declared types only.)"""
    from converters.stateful import zero_state

    stateful = make_stateful(_lstm_graph(dtype=np.float64))
    assert {name: value.dtype for name, value in zero_state(stateful, 2).items()} == {
        "state_0_h": np.float64, "state_0_c": np.float64}


def test_a_reverse_node_is_refused() -> None:
    with pytest.raises(StatefulError, match="LSTM node 'lstm_node' runs reverse: .*cannot be streamed"):
        make_stateful(_lstm_graph(direction="reverse"))


def test_per_sample_lengths_from_the_input_are_refused() -> None:
    from onnx import TensorProto, helper

    model = _lstm_graph(lengths="lengths", extra_inputs=[helper.make_tensor_value_info("lengths", TensorProto.INT32,
                                                                                      [2])])
    with pytest.raises(StatefulError, match="'lstm_node' takes per-sample sequence_lens 'lengths' computed from "
                                            "input 'lengths'.*would reset its carried state"):
        make_stateful(model)


def test_layout_1_is_refused() -> None:
    with pytest.raises(StatefulError, match="LSTM node 'lstm_node' has layout 1 .*needs layout 0"):
        make_stateful(_lstm_graph(layout=1))


def test_the_check_fails_when_state_is_not_carried() -> None:
    """Guard on check_streaming itself: a step form whose state output is cut off from its input fails."""
    model = _lstm_graph()
    stateful = make_stateful(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(stateful)
    for node in broken.graph.node:  # feed the LSTM zeros-from-nowhere: the carried h never reaches it
        if node.op_type == "LSTM":
            node.input[5] = ""
    with pytest.raises(StatefulError, match="does not reproduce the whole sequence"):
        check_streaming(model, broken)


# --- real models from each framework ------------------------------------------------------------------

def test_keras_stack_streams_in_chunks_like_the_whole_sequence() -> None:
    import keras

    keras.utils.set_random_seed(3)
    source = keras.Sequential([keras.Input((None, 3), name="x"), keras.layers.LSTM(4, return_sequences=True),
                               keras.layers.GRU(5, return_sequences=True), keras.layers.Dense(2)])
    result = convert(source, stateful=True)
    pairs = state_pairs(result.model)
    assert len(pairs) == 3  # LSTM h, c and GRU h
    for entry in result.annotations:
        validate(entry)
        assert entry["state"]["initial_state"] == "zeros" and entry["source"]["framework"] == "keras"
    x = np.random.default_rng(5).normal(size=(2, 9, 3)).astype(np.float32)
    from converters.stateful import run_steps, zero_state

    state, chunks = zero_state(result.model, 2), []
    for a, b in ((0, 1), (1, 4), (4, 5), (5, 9)):  # uneven chunks carry the state like single steps
        out = run_onnx(result.model, {"x": x[:, a:b], **state})
        state = {pair["input"]: out[pair["output"]] for pair in pairs}
        chunks.append(out[result.model.graph.output[0].name])
    expected = np.asarray(source(x))
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), expected, atol=1e-5)
    steps = run_steps(result.model, "x", x)
    np.testing.assert_allclose(np.concatenate([s[result.model.graph.output[0].name] for s in steps], 1), expected,
                               atol=1e-5)


@pytest.mark.parametrize(("example", "framework", "kinds"), [
    ("sine_lstm_stream", "keras", ["h", "c"]),
    ("tf_basic_lstm_stream", "tensorflow", ["h", "c"]),
    ("gru_stack_stream", "pytorch", ["h", "h"]),
])
def test_committed_examples_carry_state_metadata(example: str, framework: str, kinds: list[str]) -> None:
    from tests.support import EXAMPLES

    model = onnx.load(str(EXAMPLES / example / "1" / "model.onnx"))
    onnx.checker.check_model(model)
    pairs = state_pairs(model)
    assert [pair["input"].rsplit("_", 1)[1] for pair in pairs] == kinds
    annotated = [(kind, item) for entry in read_annotations(model)
                 for kind, item in entry["state"].items() if kind != "initial_state"]
    def key(pair: dict) -> str:
        return str(pair["input"])

    assert sorted(({"input": item["input"], "output": item["output"]} for _, item in annotated), key=key) == \
        sorted(pairs, key=key)
    assert all(entry["source"]["framework"] == framework and entry["state"]["initial_state"] == "zeros"
               for entry in read_annotations(model))


def test_cli_stateful_flag_writes_a_step_form_that_streams_like_torch(tmp_path: Path) -> None:
    """`modelbridge convert ... --stateful` as a user runs it, on a TorchScript file of a stacked GRU."""
    torch.manual_seed(12)
    source = _GruStack().eval()
    path = tmp_path / "gru.pt"
    torch.jit.trace(source, torch.randn(2, 5, 3)).save(str(path))
    target = tmp_path / "gru.onnx"
    done = subprocess.run([sys.executable, "-m", "converters.cli", "convert", str(path), "-o", str(target),
                           "--input", "x:-1,-1,3", "--stateful"], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    model = onnx.load(str(target))
    assert [pair["input"] for pair in state_pairs(model)] == ["state_0_h", "state_1_h"]
    from converters.stateful import run_steps

    x = np.random.default_rng(13).normal(size=(2, 6, 3)).astype(np.float32)
    output = model.graph.output[0].name
    steps = np.concatenate([step[output] for step in run_steps(model, "x", x)], axis=1)
    np.testing.assert_allclose(steps, source(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


class _GruStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]
