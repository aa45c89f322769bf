"""Per-gate annotations of fused ONNX recurrent nodes: write, read, validate.

One entry per LSTM/GRU/RNN node, stored as JSON twice: on the node's own ``metadata_props`` and
in the list under the model's ``metadata_props`` (both under key ``modelbridge.recurrent``).  The
entry says which rows of W, R and B hold which gate in each direction, where they came from in the
source framework, and (schema 2) how the graph wires the node: what feeds sequence_lens and the
initial states, and which graph outputs Y, Y_h, Y_c become.  docs/annotations.md documents the schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import onnx

from converters.parity import set_metadata
from converters.weights import NotConstantError, resolve
from converters.wiring import AnnotationError, GraphIndex, axes, check_wiring, node_wiring

ANNOTATION_KEY = "modelbridge.recurrent"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # schema 1 entries (no wiring) are still read and validated
NODE_METADATA_IR_VERSION = 10
GATE_ORDERS: dict[str, tuple[str, ...]] = {"LSTM": ("i", "o", "f", "c"), "GRU": ("z", "r", "h"), "RNN": ("i",)}
DEFAULT_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
    "GRU": ("Sigmoid", "Tanh"),
    "RNN": ("Tanh",),
}
PEEPHOLE_ORDER = ("i", "o", "f")
_DIRECTIONS = {"forward": ["forward"], "reverse": ["reverse"], "bidirectional": ["forward", "reverse"]}


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(item) for item in value]
    return value


def describe_node(model: onnx.ModelProto, node: onnx.NodeProto, index: GraphIndex | None = None) -> dict[str, Any]:
    """Everything about a recurrent node that its attributes, weight shapes and the graph around it say."""
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
        "axes": axes(int(attrs.get("layout", 0)), node.op_type),
        "wiring": node_wiring(model, node, index),
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
    source_wiring: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build, validate and store the annotation of ``node`` (which must belong to ``model.graph``).

    ``source_wiring`` is what the converter knows about the node's optional inputs and outputs in
    source terms, keyed by ONNX slot (``sequence_lens``, ``initial_h``, ``initial_c``, ``Y``, ``Y_h``,
    ``Y_c``), e.g. ``{"sequence_lens": "mask of input 'tokens' (Embedding mask_zero)", "Y_h":
    "return_state h"}``; each named slot must be wired in the node.
    """
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
        "wiring": dict(source_wiring or {}),
    }
    by_onnx = {onnx_gate: source_gate for source_gate, onnx_gate in gate_map.items()}
    for rows in entry["gate_rows"].values():
        for gate, ranges in rows.items():
            ranges["source_gate"] = by_onnx.get(gate)
    entry = json.loads(json.dumps(entry, sort_keys=True))  # what a reader gets back
    validate(entry)
    _store(model, node, entry)
    return entry


def _store(model: onnx.ModelProto, node: onnx.NodeProto, entry: dict[str, Any]) -> None:
    # NodeProto.metadata_props belongs to IR version 10 (ONNX 1.16); older IR readers may drop it.
    model.ir_version = max(model.ir_version, NODE_METADATA_IR_VERSION)
    set_metadata(node.metadata_props, ANNOTATION_KEY, json.dumps(entry, sort_keys=True))
    entries = [other for other in read_annotations(model) if other.get("node") != node.name]
    entries.append(entry)
    order = {other.name: position for position, other in enumerate(model.graph.node)}
    entries.sort(key=lambda item: order.get(item.get("node"), len(order)))
    set_metadata(model.metadata_props, ANNOTATION_KEY, json.dumps(entries, sort_keys=True))


def annotation_of(model: onnx.ModelProto, node: onnx.NodeProto) -> dict[str, Any] | None:
    """The node's entry: its own metadata, else the model-level list's entry of that name."""
    own = node_annotation(node)
    if own is not None:
        return own
    return next((entry for entry in read_annotations(model) if entry.get("node") == node.name), None)


def refresh_annotations(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Re-derive every annotated node's graph-derived fields (wiring after a rewrite, schema 1 -> 2).

    What the converter said (``source``, ``state``...) is kept; call this after editing the graph
    around annotated nodes so the stored wiring matches the file.
    """
    index = GraphIndex(model)
    refreshed = []
    for node in model.graph.node:
        if node.op_type not in GATE_ORDERS:
            continue
        entry = annotation_of(model, node)
        if entry is None:
            continue
        derived = json.loads(json.dumps(describe_node(model, node, index), sort_keys=True))
        derived_rows = derived["gate_rows"]
        for direction, rows in derived_rows.items():
            for gate, ranges in rows.items():
                ranges["source_gate"] = entry.get("gate_rows", {}).get(direction, {}).get(gate, {}).get("source_gate")
        updated = {**entry, **derived}
        updated["source"] = {"wiring": {}, **entry.get("source", {})}
        validate(updated)
        _store(model, node, updated)
        refreshed.append(updated)
    return refreshed


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


def validate(entry: dict[str, Any], *, model: onnx.ModelProto | None = None, node: onnx.NodeProto | None = None) -> None:
    """Raise AnnotationError naming the first thing in ``entry`` that breaks the schema.

    With ``model`` and ``node`` also check that every graph-derived field still says what the node
    and the graph around it say (a stale annotation after a rewrite is named field by field).
    """
    version = entry.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise AnnotationError(f"annotation schema_version {version!r} is not one of {list(READABLE_VERSIONS)}")
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
    if version >= 2:
        check_wiring(name, op, entry.get("wiring"), entry["source"].get("wiring", {}))
    if model is not None and node is not None:
        _validate_against(entry, model, node)


def _validate_against(entry: dict[str, Any], model: onnx.ModelProto, node: onnx.NodeProto) -> None:
    if entry["node"] != node.name:
        raise AnnotationError(f"annotation of {entry['node']!r} checked against node {node.name!r}")
    derived = json.loads(json.dumps(describe_node(model, node), sort_keys=True))
    if entry["schema_version"] < 2:
        derived = {key: value for key, value in derived.items() if key not in ("wiring", "axes", "schema_version")}
    else:
        derived.pop("schema_version")
    derived_rows = derived.pop("gate_rows")
    for key, value in derived.items():
        if entry.get(key) != value:
            raise AnnotationError(f"{node.name}: annotation field {key!r} is stale: it says {entry.get(key)!r}, "
                                  f"the graph says {value!r}")
    for direction, rows in derived_rows.items():
        for gate, ranges in rows.items():
            stored = {k: v for k, v in entry["gate_rows"].get(direction, {}).get(gate, {}).items() if k != "source_gate"}
            if stored != ranges:
                raise AnnotationError(f"{node.name}/{direction}/{gate}: rows {stored} != {ranges}")


def validate_model(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Every fused recurrent node is annotated and its annotation matches the graph; returns the entries."""
    entries = []
    for node in model.graph.node:
        if node.op_type not in GATE_ORDERS:
            continue
        entry = annotation_of(model, node)
        if entry is None:
            raise AnnotationError(f"{node.op_type} node {node.name!r} has no {ANNOTATION_KEY} annotation")
        validate(entry, model=model, node=node)
        entries.append(entry)
    return entries
