"""--stateful: the step form carries recurrent state through graph inputs/outputs the server feeds back."""

from __future__ import annotations

import json

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
    with pytest.raises(StatefulError, match="runs bidirectional: it reads the sequence backwards"):
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
