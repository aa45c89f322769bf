"""Where a fused recurrent node's data comes from and goes to, read from the graph itself.

For each optional input (sequence_lens, initial_h, initial_c) the producers are traced back to the
model inputs whose values it depends on (a mask computed from a token input, an encoder's state...),
or found to be a constant / zeros; each output (Y, Y_h, Y_c) is followed forward through layout-only
ops to the graph outputs it becomes.  Derived from the graph, so it is right whichever converter
wrote the node.  numpy + onnx only (the server's gates view imports it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from converters.weights import resolve

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
# Ops that only move or reshape data: a graph output reached through them is still "the node's Y".
LAYOUT_OPS = frozenset({"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Flatten", "Cast"})
# Ops whose output depends on their input's shape only, never its values.
SHAPE_OPS = frozenset({"Shape", "Size"})
# Ops that keep a zero tensor zero whatever their other inputs (first input carries the data).
_ZERO_KEEPING = frozenset({"Expand", "Tile", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Cast", "Identity",
                           "Slice", "Gather", "Flatten", "CastLike"})
INPUT_SLOTS = {"X": 0, "sequence_lens": 4, "initial_h": 5, "initial_c": 6}
OUTPUT_SLOTS = {"Y": 0, "Y_h": 1, "Y_c": 2}
SMALL_CONSTANT = 64  # constants up to this many values are written out in full


class AnnotationError(ValueError):
    """An annotation entry (or its wiring) that does not match the schema or its node."""


class GraphIndex:
    """Producers, consumers, model inputs and outputs of one graph, computed once."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.initializers = {init.name for init in graph.initializer}
        self.inputs = [value.name for value in graph.input if value.name not in self.initializers]
        self.outputs = [value.name for value in graph.output]
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return None


def _constant(index: GraphIndex, name: str) -> np.ndarray | None:
    """The value of a constant tensor, or None when onnx's evaluator cannot fold it."""
    try:
        return resolve(index.model, name)
    except Exception:  # noqa: BLE001 - any evaluator failure only means "value unknown"
        return None


def _is_zero(index: GraphIndex, name: str, depth: int = 0) -> bool:
    """Whether ``name`` is all zeros by construction (a zero constant, ConstantOfShape(0), their reshapes)."""
    if not name or depth > 32:
        return False
    if not _cone_inputs(index, name):  # a constant: evaluate it
        value = _constant(index, name)
        return value is not None and bool(np.all(value == 0))
    producer = index.producers.get(name)
    if producer is None:  # a model input
        return False
    if producer.op_type == "ConstantOfShape":
        value = _attribute(producer, "value")
        return value is None or bool(np.all(numpy_helper.to_array(value) == 0))
    if producer.op_type in _ZERO_KEEPING:
        return _is_zero(index, producer.input[0], depth + 1)
    if producer.op_type == "Concat":
        return all(_is_zero(index, item, depth + 1) for item in producer.input if item)
    if producer.op_type == "Mul":
        return any(_is_zero(index, item, depth + 1) for item in producer.input if item)
    return False


def _cone_inputs(index: GraphIndex, name: str) -> set[str]:
    """Model inputs anywhere upstream of ``name`` (values or shapes)."""
    found: set[str] = set()
    stack, seen = [name], set()
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        if tensor in index.inputs:
            found.add(tensor)
        elif tensor in index.producers:
            stack.extend(index.producers[tensor].input)
    return found


def trace_input(index: GraphIndex, name: str) -> dict[str, Any] | None:
    """What feeds one node input: a model input, a constant, zeros, or a computation on model inputs."""
    if not name:
        return None
    values: set[str] = set()  # model inputs whose values reach ``name``
    shapes: set[str] = set()  # model inputs whose shape only reaches it
    ops: list[str] = []
    recurrent: list[str] = []
    stack: list[tuple[str, bool]] = [(name, False)]
    seen: set[tuple[str, bool]] = set()
    while stack:
        tensor, shape_only = stack.pop()
        if not tensor or (tensor, shape_only) in seen:
            continue
        seen.add((tensor, shape_only))
        if tensor in index.inputs:
            (shapes if shape_only else values).add(tensor)
            continue
        producer = index.producers.get(tensor)
        if producer is None:
            continue
        if not shape_only and producer.op_type != "Constant":
            if producer.op_type not in ops:
                ops.append(producer.op_type)
            if producer.op_type in RECURRENT_OPS and producer.name not in recurrent:
                recurrent.append(producer.name)
        only = shape_only or producer.op_type in SHAPE_OPS
        stack.extend((item, only) for item in producer.input)
    record: dict[str, Any] = {"tensor": name}
    if name in index.inputs:
        record["kind"] = "graph_input"
    elif values:
        record["kind"] = "computed"
    else:
        record["kind"] = "zeros" if _is_zero(index, name) else ("constant" if not shapes else "computed")
    if record["kind"] == "constant":
        value = _constant(index, name)
        if value is not None:
            record["shape"] = list(value.shape)
            if value.size <= SMALL_CONSTANT:
                record["value"] = value.tolist()
    record["graph_inputs"] = sorted(values)
    record["shape_from"] = sorted(shapes - values)
    record["via"] = list(reversed(ops))  # from the model inputs towards the node
    record["recurrent_nodes"] = list(reversed(recurrent))
    return record


def trace_output(index: GraphIndex, name: str) -> dict[str, Any] | None:
    """Which graph outputs one node output becomes, directly or through layout-only ops."""
    if not name:
        return None
    reached: list[str] = []
    via: list[str] = []
    consumers: list[str] = []
    stack, seen = [name], set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in index.outputs and tensor not in reached:
            reached.append(tensor)
        for node in index.consumers.get(tensor, []):
            if node.op_type in LAYOUT_OPS and node.input[0] == tensor:
                if node.op_type not in via:
                    via.append(node.op_type)
                stack.extend(out for out in node.output if out)
            elif node.name not in consumers:
                consumers.append(node.name or node.op_type)
    return {"tensor": name, "graph_outputs": sorted(reached, key=index.outputs.index), "via": via,
            "consumers": consumers, "used": bool(reached or consumers)}


def node_wiring(model: onnx.ModelProto, node: onnx.NodeProto, index: GraphIndex | None = None) -> dict[str, Any]:
    """The node's inputs and outputs as the graph wires them (``None`` for a slot left empty)."""
    index = index or GraphIndex(model)
    inputs = list(node.input) + [""] * (8 - len(node.input))
    outputs = list(node.output) + [""] * (3 - len(node.output))
    wiring: dict[str, Any] = {}
    for slot, position in INPUT_SLOTS.items():
        if slot == "initial_c" and node.op_type != "LSTM":
            continue
        wiring[slot] = trace_input(index, inputs[position])
    for slot, position in OUTPUT_SLOTS.items():
        if slot == "Y_c" and node.op_type != "LSTM":
            continue
        wiring[slot] = trace_output(index, outputs[position])
    return wiring


def axes(layout: int, op: str) -> dict[str, list[str]]:
    """The meaning of each axis of X, the states and the outputs for ``layout`` (ONNX's definition)."""
    state = ["num_directions", "batch", "hidden_size"] if layout == 0 else ["batch", "num_directions", "hidden_size"]
    result = {
        "X": ["seq", "batch", "input_size"] if layout == 0 else ["batch", "seq", "input_size"],
        "sequence_lens": ["batch"],
        "initial_h": state,
        "Y": ["seq", "num_directions", "batch", "hidden_size"] if layout == 0
        else ["batch", "seq", "num_directions", "hidden_size"],
        "Y_h": state,
    }
    if op == "LSTM":
        result["initial_c"] = result["Y_c"] = state
    return result


_INPUT_KINDS = ("graph_input", "constant", "zeros", "computed")
_INPUT_RECORD = {"tensor": str, "kind": str, "graph_inputs": list, "shape_from": list, "via": list,
                 "recurrent_nodes": list}
_OUTPUT_RECORD = {"tensor": str, "graph_outputs": list, "via": list, "consumers": list, "used": bool}


def check_wiring(name: str, op: str, wiring: Any, told: Any) -> None:
    """Raise AnnotationError unless ``wiring`` is a well-formed wiring of an ``op`` node and the converter's
    own account (``told``, keyed by slot) names only slots the node wires."""
    if not isinstance(wiring, dict):
        raise AnnotationError(f"{name}: annotation field 'wiring' missing or not a dict")
    slots = [slot for slot in (*INPUT_SLOTS, *OUTPUT_SLOTS) if op == "LSTM" or slot not in ("initial_c", "Y_c")]
    if sorted(wiring) != sorted(slots):
        raise AnnotationError(f"{name}: wiring slots {sorted(wiring)} != {sorted(slots)} for {op}")
    for slot in slots:
        record = wiring[slot]
        if record is None:
            if slot == "X":
                raise AnnotationError(f"{name}: wiring X is null; X is a required input")
            continue
        shape = _INPUT_RECORD if slot in INPUT_SLOTS else _OUTPUT_RECORD
        for key, kind in shape.items():
            if not isinstance(record.get(key), kind):
                raise AnnotationError(f"{name}: wiring {slot}.{key} missing or not a {kind.__name__}")
        if slot in INPUT_SLOTS and record["kind"] not in _INPUT_KINDS:
            raise AnnotationError(f"{name}: wiring {slot}.kind {record['kind']!r} is not one of {list(_INPUT_KINDS)}")
        if slot in INPUT_SLOTS and record["kind"] == "graph_input" and record["graph_inputs"] != [record["tensor"]]:
            raise AnnotationError(f"{name}: wiring {slot} is graph input {record['tensor']!r} but names "
                                  f"graph_inputs {record['graph_inputs']}")
    if not isinstance(told, dict):
        raise AnnotationError(f"{name}: source field 'wiring' is not a dict")
    for slot in told:
        if slot not in wiring:
            raise AnnotationError(f"{name}: source wiring names slot {slot!r}; {op} has {slots}")
        if wiring[slot] is None:
            raise AnnotationError(f"{name}: source wiring describes {slot} ({told[slot]!r}) but the node has no {slot}")
