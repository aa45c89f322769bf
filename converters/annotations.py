"""Per-gate annotations of fused ONNX recurrent nodes: write, read, validate.

One entry per LSTM/GRU/RNN node, stored as JSON twice: on the node's own ``metadata_props`` and
in the list under the model's ``metadata_props`` (both under key ``modelbridge.recurrent``).  The
entry says which rows of W, R and B hold which gate in each direction, and where they came from in
the source framework.  docs/annotations.md documents the schema.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from converters.parity import set_metadata
from converters.weights import NotConstantError, resolve

ANNOTATION_KEY = "modelbridge.recurrent"
SCHEMA_VERSION = 1
NODE_METADATA_IR_VERSION = 10
GATE_ORDERS: dict[str, tuple[str, ...]] = {"LSTM": ("i", "o", "f", "c"), "GRU": ("z", "r", "h"), "RNN": ("i",)}
DEFAULT_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
    "GRU": ("Sigmoid", "Tanh"),
    "RNN": ("Tanh",),
}
PEEPHOLE_ORDER = ("i", "o", "f")
_DIRECTIONS = {"forward": ["forward"], "reverse": ["reverse"], "bidirectional": ["forward", "reverse"]}


class AnnotationError(ValueError):
    """An annotation entry that does not match the schema or its node."""


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(item) for item in value]
    return value


def describe_node(model: onnx.ModelProto, node: onnx.NodeProto) -> dict[str, Any]:
    """Everything about a recurrent node that its attributes and weight shapes say."""
    if node.op_type not in GATE_ORDERS:
        raise AnnotationError(f"node {node.name!r} is {node.op_type}, not a recurrent op (LSTM/GRU/RNN)")
    attrs = {key: _text(value) for key, value in _attributes(node).items()}
    inputs = list(node.input) + [""] * (8 - len(node.input))
    try:
        weight = resolve(model, inputs[1])
        recurrence = resolve(model, inputs[2])
    except NotConstantError as exc:
        raise AnnotationError(f"node {node.name!r}: W/R are not constant ({exc})") from exc
    gates = GATE_ORDERS[node.op_type]
    direction = attrs.get("direction", "forward")
    directions = _DIRECTIONS[direction]
    hidden = int(attrs["hidden_size"]) if "hidden_size" in attrs else int(recurrence.shape[-1])
    if weight.ndim != 3 or weight.shape[0] != len(directions) or weight.shape[1] != len(gates) * hidden:
        raise AnnotationError(
            f"node {node.name!r}: W has shape {list(weight.shape)}, expected "
            f"[{len(directions)}, {len(gates) * hidden}, input_size]"
        )
    activations = attrs.get("activations", list(DEFAULT_ACTIVATIONS[node.op_type]) * len(directions))
    has_peepholes = node.op_type == "LSTM" and bool(inputs[7])
    entry: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "node": node.name,
        "op": node.op_type,
        "direction": direction,
        "directions": directions,
        "hidden_size": hidden,
        "input_size": int(weight.shape[2]),
        "layout": int(attrs.get("layout", 0)),
        "activations": activations,
        "activation_alpha": attrs.get("activation_alpha"),
        "activation_beta": attrs.get("activation_beta"),
        "clip": attrs.get("clip"),
        "onnx_gate_order": list(gates),
        "inputs": {"W": inputs[1], "R": inputs[2], "B": inputs[3] or None},
    }
    if node.op_type == "GRU":
        entry["linear_before_reset"] = int(attrs.get("linear_before_reset", 0))
    if node.op_type == "LSTM":
        entry["input_forget"] = int(attrs.get("input_forget", 0))
        entry["inputs"]["P"] = inputs[7] or None
    count = len(gates)
    entry["gate_rows"] = {
        name: {
            gate: {
                "W": [k * hidden, (k + 1) * hidden],
                "R": [k * hidden, (k + 1) * hidden],
                "Wb": [k * hidden, (k + 1) * hidden],
                "Rb": [(count + k) * hidden, (count + k + 1) * hidden],
            }
            for k, gate in enumerate(gates)
        }
        for name in directions
    }
    if has_peepholes:
        entry["peephole_rows"] = {
            name: {gate: [k * hidden, (k + 1) * hidden] for k, gate in enumerate(PEEPHOLE_ORDER)}
            for name in directions
        }
    return entry


def annotate_recurrent_node(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    *,
    framework: str,
    layer: str,
    variables: dict[str, str],
    source_gate_order: tuple[str, ...],
    gate_map: dict[str, str],
    folded: dict[str, Any] | None = None,
    notes: str | None = None,
) -> dict[str, Any]:
    """Build, validate and store the annotation of ``node`` (which must belong to ``model.graph``)."""
    if not node.name:
        taken = {other.name for other in model.graph.node}
        index = 0
        while f"{node.op_type}_{index}" in taken:
            index += 1
        node.name = f"{node.op_type}_{index}"
    entry = describe_node(model, node)
    entry["source"] = {
        "framework": framework,
        "layer": layer,
        "variables": dict(variables),
        "gate_order": list(source_gate_order),
        "gate_map": dict(gate_map),
        "folded": dict(folded or {}),
        "notes": notes,
    }
    by_onnx = {onnx_gate: source_gate for source_gate, onnx_gate in gate_map.items()}
    for rows in entry["gate_rows"].values():
        for gate, ranges in rows.items():
            ranges["source_gate"] = by_onnx.get(gate)
    validate(entry)
    # NodeProto.metadata_props belongs to IR version 10 (ONNX 1.16); older IR readers may drop it.
    model.ir_version = max(model.ir_version, NODE_METADATA_IR_VERSION)
    set_metadata(node.metadata_props, ANNOTATION_KEY, json.dumps(entry, sort_keys=True))
    entries = [other for other in read_annotations(model) if other.get("node") != node.name]
    entries.append(entry)
    set_metadata(model.metadata_props, ANNOTATION_KEY, json.dumps(entries, sort_keys=True))
    return entry


def read_annotations(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The model-level list of entries (empty when the model carries none)."""
    for prop in model.metadata_props:
        if prop.key == ANNOTATION_KEY:
            value = json.loads(prop.value)
            if not isinstance(value, list):
                raise AnnotationError(f"model metadata {ANNOTATION_KEY!r} is not a JSON list")
            return value
    return []


def node_annotation(node: onnx.NodeProto) -> dict[str, Any] | None:
    for prop in node.metadata_props:
        if prop.key == ANNOTATION_KEY:
            value: dict[str, Any] = json.loads(prop.value)
            return value
    return None


_REQUIRED = {
    "schema_version": int, "node": str, "op": str, "direction": str, "directions": list, "hidden_size": int,
    "input_size": int, "layout": int, "activations": list, "onnx_gate_order": list, "inputs": dict,
    "gate_rows": dict, "source": dict,
}
_SOURCE_REQUIRED = {"framework": str, "layer": str, "variables": dict, "gate_order": list, "gate_map": dict,
                    "folded": dict}


def _check_range(where: str, value: Any, start: int, stop: int) -> None:
    if value != [start, stop]:
        raise AnnotationError(f"{where} is {value!r}, expected [{start}, {stop}]")


def validate(entry: dict[str, Any]) -> None:
    """Raise AnnotationError naming the first thing in ``entry`` that breaks the schema."""
    for key, kind in _REQUIRED.items():
        if not isinstance(entry.get(key), kind):
            raise AnnotationError(f"annotation field {key!r} missing or not a {kind.__name__}")
    name, op = entry["node"], entry["op"]
    if op not in GATE_ORDERS:
        raise AnnotationError(f"{name}: op {op!r} is not LSTM, GRU or RNN")
    gates = GATE_ORDERS[op]
    if tuple(entry["onnx_gate_order"]) != gates:
        raise AnnotationError(f"{name}: onnx_gate_order {entry['onnx_gate_order']} should be {list(gates)}")
    if entry["direction"] not in _DIRECTIONS or entry["directions"] != _DIRECTIONS[entry["direction"]]:
        raise AnnotationError(f"{name}: direction {entry['direction']!r} / directions {entry['directions']} disagree")
    if entry["layout"] not in (0, 1):
        raise AnnotationError(f"{name}: layout {entry['layout']} is not 0 or 1")
    hidden = entry["hidden_size"]
    if hidden <= 0 or entry["input_size"] <= 0:
        raise AnnotationError(f"{name}: hidden_size and input_size must be positive")
    source = entry["source"]
    for key, kind in _SOURCE_REQUIRED.items():
        if not isinstance(source.get(key), kind):
            raise AnnotationError(f"{name}: source field {key!r} missing or not a {kind.__name__}")
    gate_map = source["gate_map"]
    if sorted(gate_map.values()) != sorted(gates):
        raise AnnotationError(f"{name}: gate_map {gate_map} must map onto each ONNX gate {list(gates)} exactly once")
    if sorted(gate_map) != sorted(source["gate_order"]):
        raise AnnotationError(f"{name}: gate_map keys {sorted(gate_map)} differ from source gate_order {source['gate_order']}")
    if sorted(entry["gate_rows"]) != sorted(entry["directions"]):
        raise AnnotationError(f"{name}: gate_rows directions {sorted(entry['gate_rows'])} != {entry['directions']}")
    by_onnx = {onnx_gate: source_gate for source_gate, onnx_gate in gate_map.items()}
    count = len(gates)
    for direction, rows in entry["gate_rows"].items():
        if sorted(rows) != sorted(gates):
            raise AnnotationError(f"{name}/{direction}: gate_rows gates {sorted(rows)} != {list(gates)}")
        for k, gate in enumerate(gates):
            where = f"{name}/{direction}/{gate}"
            for matrix in ("W", "R", "Wb"):
                _check_range(f"{where}.{matrix}", rows[gate].get(matrix), k * hidden, (k + 1) * hidden)
            _check_range(f"{where}.Rb", rows[gate].get("Rb"), (count + k) * hidden, (count + k + 1) * hidden)
            if rows[gate].get("source_gate") != by_onnx[gate]:
                raise AnnotationError(f"{where}: source_gate {rows[gate].get('source_gate')!r} != {by_onnx[gate]!r}")
