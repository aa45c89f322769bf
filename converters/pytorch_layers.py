"""Which ONNX recurrent node came from which PyTorch layer: found by parameter names, matched by value.

No torch import: this works on the parameter arrays (``state_dict`` as numpy), whatever the source
(nn.Module, TorchScript, ExportedProgram) and whichever exporter wrote the graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from converters import recurrent
from converters.annotations import GATE_ORDERS, annotate_recurrent_node
from converters.weights import resolve, resolve_optional

FRAMEWORK = "pytorch"
# source gate order and source gate -> ONNX gate, per ONNX op
TORCH_GATES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "LSTM": (("i", "f", "g", "o"), {"i": "i", "f": "f", "g": "c", "o": "o"}),
    "GRU": (("r", "z", "n"), {"r": "r", "z": "z", "n": "h"}),
    "RNN": (("h",), {"h": "i"}),
}
_OP_BY_GATES = {4: "LSTM", 3: "GRU", 1: "RNN"}
_WEIGHT_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?)weight_ih_l(?P<layer>\d+)$")


class UnsupportedModelError(ValueError):
    """A PyTorch source or layer this converter cannot turn into ONNX faithfully (names which)."""


class ExportCheckError(RuntimeError):
    """An exporter's model failed our checks (not fused, wrong opset, or parity)."""


@dataclass(frozen=True)
class RecurrentLayer:
    """One layer of an nn.LSTM/GRU/RNN, as seen in the parameter names."""

    module: str
    layer: int
    op: str
    directions: tuple[str, ...]
    variables: dict[str, str] = field(hash=False)
    cell: bool = False  # an nn.LSTMCell/GRUCell/RNNCell stepped in a Python loop, fused

    @property
    def label(self) -> str:
        if self.cell:
            return f"nn.{self.op}Cell {self.module or '<root>'!r} (stepped in a loop)"
        return f"nn.{self.op} {self.module or '<root>'!r} layer {self.layer}"


def recurrent_layers(params: dict[str, np.ndarray]) -> list[RecurrentLayer]:
    """Every nn.LSTM/GRU/RNN layer, found by its ``weight_ih_l{k}`` parameters."""
    layers = []
    for name in params:
        match = _WEIGHT_NAME.match(name)
        if not match:
            continue
        prefix, layer = match["prefix"], int(match["layer"])
        module = prefix.rstrip(".")
        if f"{prefix}weight_hr_l{layer}" in params:
            raise UnsupportedModelError(
                f"nn.LSTM {module!r} uses proj_size={params[f'{prefix}weight_hr_l{layer}'].shape[0]} "
                f"(weight_hr_l{layer}): its recurrence reads the projected state, which ONNX LSTM cannot express "
                "in one fused node (torch.onnx fails on it too: the TorchScript exporter refuses, the dynamo "
                "exporter writes a model onnxruntime cannot run); train without proj_size to convert"
            )
        hidden = params[f"{prefix}weight_hh_l{layer}"].shape[1]
        op = _OP_BY_GATES.get(params[name].shape[0] // hidden)
        if op is None:
            raise UnsupportedModelError(f"{module!r}: weight_ih_l{layer} has a shape no LSTM/GRU/RNN has")
        directions = ("forward", "reverse") if f"{prefix}weight_ih_l{layer}_reverse" in params else ("forward",)
        variables = {}
        for direction in directions:
            suffix = f"l{layer}" + ("_reverse" if direction == "reverse" else "")
            for role, stem in (("W", "weight_ih"), ("R", "weight_hh"), ("Wb", "bias_ih"), ("Rb", "bias_hh")):
                if f"{prefix}{stem}_{suffix}" in params:
                    variables[f"{direction}.{role}"] = f"{prefix}{stem}_{suffix}"
        layers.append(RecurrentLayer(module, layer, op, directions, variables))
    return layers


def expected_weights(layer: RecurrentLayer, params: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The ONNX (W, R, B) this layer's parameters become."""
    order, gate_map = TORCH_GATES[layer.op]
    per_direction = []
    for direction in layer.directions:
        weight = params[layer.variables[f"{direction}.W"]]
        hidden = weight.shape[0] // len(order)
        parts = {}
        for role in ("W", "R", "Wb", "Rb"):
            name = layer.variables.get(f"{direction}.{role}")
            parts[role] = recurrent.split_rows(
                params[name] if name else np.zeros(len(order) * hidden, weight.dtype), order
            )
        per_direction.append({gate: {role: parts[role][gate] for role in parts} for gate in order})
    return recurrent.to_onnx_weights(layer.op, per_direction, gate_map)


def annotate(model: onnx.ModelProto, layers: list[RecurrentLayer], params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Match every fused node to its PyTorch layer by value and annotate it; refuse what is not fused."""
    looping = sorted({node.op_type for node in model.graph.node if node.op_type in ("Loop", "Scan")})
    if layers and looping:
        raise ExportCheckError(f"the graph holds {'/'.join(looping)} instead of fused recurrent ops")
    nodes = [node for node in model.graph.node if node.op_type in GATE_ORDERS]
    entries, used = [], set()
    for layer in layers:
        want = expected_weights(layer, params)
        for index, node in enumerate(nodes):
            if index in used or node.op_type != layer.op:
                continue
            inputs = list(node.input) + [""] * 4
            bias = resolve_optional(model, inputs[3])
            got = [resolve(model, inputs[1]), resolve(model, inputs[2]),
                   np.zeros_like(want[2]) if bias is None else bias]
            if all(a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(got, want, strict=True)):
                break
        else:
            found = ", ".join(sorted({node.op_type for node in model.graph.node})) or "nothing"
            raise ExportCheckError(f"{layer.label} did not come out as a fused ONNX {layer.op} node (graph ops: {found})")
        used.add(index)
        layout = next((attr.i for attr in node.attribute if attr.name == "layout"), 0)
        if layout != 0:
            raise ExportCheckError(f"{layer.label} was exported with layout={layout}; onnxruntime-web needs layout 0")
        order, gate_map = TORCH_GATES[layer.op]
        entries.append(annotate_recurrent_node(
            model, node, framework=FRAMEWORK, layer=layer.module, variables=layer.variables,
            source_gate_order=order, gate_map=gate_map,
            notes=(f"torch.nn.{layer.op}Cell stepped over time in a Python loop, fused; B = [bias_ih, bias_hh]"
                   if layer.cell else f"torch.nn.{layer.op} layer {layer.layer}; B = [bias_ih, bias_hh] per direction"),
        ))
    stray = [node.name or node.op_type for index, node in enumerate(nodes) if index not in used]
    if stray:
        raise ExportCheckError(f"fused nodes {stray} match no nn.LSTM/GRU/RNN parameters")
    return entries
