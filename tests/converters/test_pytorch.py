"""PyTorch models of every recurrent variant, converted through the API: fused, annotated, proven."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from converters import DEFAULT_OPSET, UnsupportedSourceError, convert, gates
from converters.annotations import node_annotation, read_annotations, validate
from converters.parity import random_feeds, run_onnx
from converters.pytorch import (
    ExportCheckError,
    UnsupportedModelError,
    annotate,
    parameters_of,
    recurrent_layers,
)
from converters.pytorch import convert as convert_torch
from converters.reference import intermediates, run_reference
from converters.result import ConversionResult
from converters.specs import InputSpec
from tests.converters.torch_models import CellLoop, FeedForward, LstmWithState, Sequence, recurrent_variants

VARIANTS = recurrent_variants()
FUSED = {"LSTM", "GRU", "RNN"}


@pytest.fixture(scope="module")
def converted() -> dict[str, tuple[nn.Module, ConversionResult]]:
    # The TorchScript exporter keeps these fast; test_default_exporter covers the dynamo path.
    results = {}
    for name, (model, shape) in VARIANTS.items():
        result = convert_torch(model, inputs=[InputSpec("x", shape)], opset=DEFAULT_OPSET, exporter="torchscript")
        results[name] = (model, result)
    return results


def _ops(result: ConversionResult) -> list[str]:
    return [node.op_type for node in result.model.graph.node]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_recurrent_layers_come_out_fused_and_proven(name: str, converted: dict) -> None:
    model, result = converted[name]
    ops = _ops(result)
    layers = model.rnn.num_layers
    assert sum(op in FUSED for op in ops) == layers and not {"Loop", "Scan"} & set(ops)
    for node in result.model.graph.node:
        if node.op_type in FUSED:
            assert {attr.name: attr.i for attr in node.attribute}.get("layout", 0) == 0
    assert result.parity.passed and max(out.max_abs for out in result.parity.outputs) < 1e-5
    assert [item["shape"][:2] for item in result.parity.inputs] == [[2, 5], [5, 3], [1, 4]]  # batch != time
    assert len(result.annotations) == layers == len(read_annotations(result.model))
    for entry in read_annotations(result.model):
        validate(entry)
        assert entry["source"]["framework"] == "pytorch" and entry["source"]["layer"] == "rnn"


def test_lstm_gates_equal_torch_parameters(converted: dict) -> None:
    model, result = converted["lstm-stacked-bidirectional-batch-first"]
    lstm, hidden = model.rnn, 5
    split = {node["source"]["variables"]["forward.W"]: node for node in gates.split_gates(result.model)["nodes"]}
    layer1 = split["rnn.weight_ih_l1"]
    assert layer1["input_size"] == 10 and layer1["op"] == "LSTM"
    reverse = layer1["directions"][1]
    assert reverse["direction"] == "reverse"
    # torch order i, f, g, o: f is rows H:2H, g (ONNX c) is rows 2H:3H
    f = reverse["gates"]["f"]
    np.testing.assert_allclose(f["W"], lstm.weight_ih_l1_reverse[hidden:2 * hidden].detach().numpy(), rtol=1e-7)
    np.testing.assert_allclose(f["R"], lstm.weight_hh_l1_reverse[hidden:2 * hidden].detach().numpy(), rtol=1e-7)
    np.testing.assert_allclose(f["Wb"], lstm.bias_ih_l1_reverse[hidden:2 * hidden].detach().numpy(), rtol=1e-7)
    np.testing.assert_allclose(f["Rb"], lstm.bias_hh_l1_reverse[hidden:2 * hidden].detach().numpy(), rtol=1e-7)
    c = split["rnn.weight_ih_l0"]["directions"][0]["gates"]["c"]
    assert c["source_gate"] == "g"
    np.testing.assert_allclose(c["W"], lstm.weight_ih_l0[2 * hidden:3 * hidden].detach().numpy(), rtol=1e-7)


def test_gru_gates_equal_torch_parameters(converted: dict) -> None:
    model, result = converted["gru-stacked-bidirectional-seq-first"]
    gru, hidden = model.rnn, 4
    (first, _) = gates.split_gates(result.model)["nodes"]
    assert first["linear_before_reset"] == 1  # torch applies r after the recurrent matmul
    forward = first["directions"][0]["gates"]
    assert {gate: forward[gate]["source_gate"] for gate in forward} == {"z": "z", "r": "r", "h": "n"}
    # torch order r, z, n
    np.testing.assert_allclose(forward["z"]["W"], gru.weight_ih_l0[hidden:2 * hidden].detach().numpy(), rtol=1e-7)
    np.testing.assert_allclose(forward["r"]["R"], gru.weight_hh_l0[:hidden].detach().numpy(), rtol=1e-7)
    np.testing.assert_allclose(forward["h"]["Rb"], gru.bias_hh_l0[2 * hidden:].detach().numpy(), rtol=1e-7)


def test_rnn_relu_without_bias(converted: dict) -> None:
    _, result = converted["rnn-relu-no-bias"]
    (node,) = gates.split_gates(result.model)["nodes"]
    assert node["activations"] == ["Relu"]
    assert not np.any(node["directions"][0]["gates"]["i"]["Wb"])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_numpy_reference_equals_onnxruntime(name: str, converted: dict) -> None:
    _, result = converted[name]
    feeds = random_feeds(result.model, seed=7, dynamic=4)
    reference = run_reference(result.model, feeds)
    actual = intermediates(result.model, feeds, list(reference))
    assert reference
    for tensor, value in reference.items():
        np.testing.assert_allclose(value, actual[tensor], atol=1e-5, rtol=0)


def test_states_in_and_out() -> None:
    torch.manual_seed(1)
    specs = [InputSpec("x", (None, None, 3)), InputSpec("h0", (2, None, 5)), InputSpec("c0", (2, None, 5))]
    result = convert_torch(LstmWithState(), inputs=specs, opset=DEFAULT_OPSET, exporter="torchscript")
    assert [out.name for out in result.model.graph.output] == ["output_0", "output_1", "output_2"]
    assert _ops(result).count("LSTM") == 2 and result.parity.passed
    feeds = random_feeds(result.model, seed=3, dynamic=3)
    reference = run_reference(result.model, feeds)
    actual = intermediates(result.model, feeds, list(reference))
    for tensor, value in reference.items():
        np.testing.assert_allclose(value, actual[tensor], atol=1e-5, rtol=0)


def test_feed_forward_layers_map_to_natural_ops() -> None:
    torch.manual_seed(2)
    result = convert(FeedForward(), framework="pytorch", inputs=[InputSpec("x", (None, 6))])
    ops = _ops(result)
    assert "PRelu" in ops and "Softmax" in ops and "Tanh" in ops and "Sigmoid" in ops
    assert "ReduceMax" in ops and "Reshape" in ops  # maxout
    assert ops.count("Gemm") + ops.count("MatMul") >= 3
    assert result.parity.passed and result.annotations == []
    assert result.model.ir_version == 8  # opset 17's IR: nothing here needs more (annotated models carry 10)


def test_default_exporter_is_dynamo_with_weights_matched_through_its_graph() -> None:
    torch.manual_seed(3)
    model = Sequence(nn.LSTM(3, 4, batch_first=True), 4)
    stages: list[str] = []
    result = convert(model, inputs=[InputSpec("x", (None, None, 3))], progress=stages.append)
    source = {prop.key: prop.value for prop in result.model.metadata_props}["modelbridge.source"]
    assert '"exporter": "dynamo"' in source
    assert stages[:2] == ["loading the pytorch converter", "loading"]
    assert any("verifying" in stage for stage in stages)
    (node,) = [node for node in result.model.graph.node if node.op_type == "LSTM"]
    assert node_annotation(node)["source"]["variables"]["forward.Rb"] == "rnn.bias_hh_l0"
    feeds = random_feeds(result.model, seed=1, dynamic=6)
    np.testing.assert_allclose(run_onnx(result.model, feeds)["output"],
                               model(torch.from_numpy(feeds["x"])).detach().numpy(), atol=1e-5)


def test_exported_program_file(tmp_path) -> None:
    torch.manual_seed(4)
    model = Sequence(nn.GRU(3, 4, batch_first=True), 4).eval()
    program = torch.export.export(model, (torch.randn(2, 6, 3),))
    torch.export.save(program, tmp_path / "gru.pt2")
    result = convert(tmp_path / "gru.pt2")
    assert _ops(result).count("GRU") == 1 and result.parity.passed
    assert result.annotations[0]["source"]["variables"]["forward.W"] == "rnn.weight_ih_l0"


def test_projection_is_refused_naming_the_layer() -> None:
    model = Sequence(nn.LSTM(3, 6, proj_size=2, batch_first=True), 2)
    with pytest.raises(UnsupportedModelError, match="nn.LSTM 'rnn' uses proj_size=2 .*ONNX LSTM cannot express"):
        convert(model, inputs=[InputSpec("x", (None, None, 3))])


def test_unsupported_sources_are_named(tmp_path) -> None:
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(UnsupportedModelError, match="holds a state_dict .* save instead one of"):
        convert(tmp_path / "weights.pt", inputs=[InputSpec("x", (1, 2))])
    with pytest.raises(UnsupportedModelError, match="nn.Module does not say its inputs"):
        convert(nn.Linear(2, 2))
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(UnsupportedSourceError, match="cannot tell the framework of 'model.bin'"):
        convert(tmp_path / "model.bin")
    with pytest.raises(UnsupportedSourceError, match="unknown framework 'caffe'"):
        convert(nn.Linear(2, 2), framework="caffe")


def test_default_conversion_of_bidirectional_gru_runs_at_any_length() -> None:
    """Whichever exporter is kept, the model must not carry the traced sequence length."""
    torch.manual_seed(6)
    model = Sequence(nn.GRU(3, 4, bidirectional=True, batch_first=True), 8).eval()
    result = convert(model, inputs=[InputSpec("x", (None, None, 3))])
    assert [node.op_type for node in result.model.graph.node].count("GRU") == 1
    rng = np.random.default_rng(0)
    for length in (1, 3, 9):
        x = rng.normal(size=(2, length, 3)).astype(np.float32)
        np.testing.assert_allclose(run_onnx(result.model, {"x": x})["output"],
                                   model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_pickled_module_file_is_refused_unless_trusted(tmp_path) -> None:
    torch.manual_seed(7)
    model = Sequence(nn.RNN(3, 4, batch_first=True), 4)
    torch.save(model, tmp_path / "rnn.pth")
    spec = [InputSpec("x", (None, None, 3))]
    with pytest.raises(UnsupportedModelError, match=r"whole pickled model .*tests\.converters\.torch_models\.Sequence.*"
                       r"torch\.export\.save"):
        convert_torch(tmp_path / "rnn.pth", inputs=spec)
    result = convert_torch(tmp_path / "rnn.pth", inputs=spec, exporter="torchscript", trust_pickle=True)
    assert _ops(result).count("RNN") == 1 and result.parity.passed


def test_unfused_or_mismatched_exports_are_refused(converted: dict) -> None:
    """annotate() is the gate every exporter's model passes: a loop, or weights that are not the layer's, fail."""
    model, result = converted["lstm-stacked-bidirectional-batch-first"]
    params = parameters_of(model)
    layers = recurrent_layers(params)

    looped = onnx.ModelProto()
    looped.CopyFrom(result.model)
    looped.graph.node.append(onnx.helper.make_node("Scan", [], [], name="scan", num_scan_inputs=0))
    with pytest.raises(ExportCheckError, match="holds Scan instead of fused recurrent ops"):
        annotate(looped, layers, params)

    swapped = dict(params)
    weight = swapped["rnn.weight_ih_l1"].copy()
    swapped["rnn.weight_ih_l1"] = np.concatenate([weight[5:10], weight[:5], weight[10:]])  # i <-> f
    with pytest.raises(ExportCheckError, match="nn.LSTM 'rnn' layer 1 did not come out as a fused ONNX LSTM node"):
        annotate(result.model, layers, swapped)


def test_scripted_torchscript_file(tmp_path) -> None:
    """torch.jit.script keeps the module's control flow; the LSTM must still come out fused."""
    torch.manual_seed(10)
    model = Sequence(nn.LSTM(3, 4, num_layers=2, batch_first=True), 4).eval()
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    result = convert(tmp_path / "scripted.pt", inputs=[InputSpec("x", (None, None, 3))])
    ops = _ops(result)
    assert ops.count("LSTM") == 2 and not {"Loop", "Scan", "If"} & set(ops) and result.parity.passed
    assert [entry["source"]["variables"]["forward.W"] for entry in result.annotations] == [
        "rnn.weight_ih_l0", "rnn.weight_ih_l1"]


@pytest.mark.parametrize("cell", [nn.LSTMCell(3, 4), nn.GRUCell(3, 4), nn.RNNCell(3, 4, nonlinearity="relu")],
                         ids=["lstm", "gru", "rnn-relu"])
def test_cell_stepped_in_a_python_loop_becomes_one_fused_node(cell: nn.Module) -> None:
    torch.manual_seed(11)
    model = CellLoop(cell, 4).eval()
    result = convert(model, inputs=[InputSpec("x", (None, None, 3))])
    op = {"LSTMCell": "LSTM", "GRUCell": "GRU", "RNNCell": "RNN"}[type(cell).__name__]
    ops = _ops(result)
    assert ops.count(op) == 1 and not {"Gemm", "MatMul", "Loop", "Scan"} & set(ops)  # no step left unrolled
    (entry,) = result.annotations
    assert entry["source"]["layer"] == "cell" and entry["source"]["variables"]["forward.R"] == "cell.weight_hh"
    assert entry["source"]["notes"].startswith(f"torch.nn.{type(cell).__name__} stepped over time in a Python loop")
    rng = np.random.default_rng(0)
    for length in (1, 4, 9):  # the loop ran over x.size(1): any length, not only the traced 4
        x = rng.normal(size=(2, length, 3)).astype(np.float32)
        got = run_onnx(result.model, {"x": x})
        want = [tensor.detach().numpy() for tensor in model(torch.from_numpy(x))]
        for value, expected in zip(got.values(), want, strict=True):
            np.testing.assert_allclose(value, expected, atol=1e-5)


class _PerStepHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell, self.out = nn.GRUCell(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, outputs = torch.zeros(x.size(0), 4), []
        for t in range(x.size(1)):
            h = self.cell(x[:, t], h)
            outputs.append(self.out(h))
        return torch.stack(outputs, 1)


class _FixedSteps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = (torch.zeros(x.size(0), 4), torch.zeros(x.size(0), 4))
        for t in range(4):
            state = self.cell(x[:, t], state)
        return state[0]


@pytest.mark.parametrize(("model", "reason"), [
    (_PerStepHead(), r"model\.cell \(nn\.GRUCell\) is stepped 4 times in a Python loop; .*a single step's output is used"),
    (_FixedSteps(), r"model\.cell \(nn\.LSTMCell\) is stepped 4 times .*does not match PyTorch at other lengths"),
], ids=["per-step-head", "fixed-steps"])
def test_cell_loop_that_is_not_a_clean_chain_is_refused_naming_the_cell(model: nn.Module, reason: str) -> None:
    with pytest.raises(UnsupportedModelError, match=reason):
        convert(model, inputs=[InputSpec("x", (None, None, 3))])


@pytest.mark.parametrize("kind", ["traced", "exported"])
def test_unrolled_cell_in_a_file_is_refused_naming_it(kind: str, tmp_path) -> None:
    """No hooks on a TorchScript/ExportedProgram file: a cell whose weights several steps read is refused."""
    torch.manual_seed(12)
    model = CellLoop(nn.LSTMCell(3, 4), 4).eval()
    x = torch.randn(2, 5, 3)
    if kind == "traced":
        path = tmp_path / "loop.pt"
        torch.jit.trace(model, x).save(str(path))
    else:
        path = tmp_path / "loop.pt2"
        torch.export.save(torch.export.export(model, (x,)), path)
    with pytest.raises(UnsupportedModelError, match=r"model\.cell \(nn\.LSTMCell\) is stepped 5 times, unrolled"):
        convert(path, inputs=[InputSpec("x", (2, 5, 3))])  # traced: zeros(2, 4) is baked in
