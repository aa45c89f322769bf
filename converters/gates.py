"""Split every fused recurrent node of an ONNX model into its conventional per-gate matrices.

numpy + onnx only: the server imports this module for ``GET /v2/models/{m}/gates``.  The output
is the JSON documented in docs/annotations.md:

    {"nodes": [{"node", "op", "hidden_size", "input_size", "activations", ...,
                "wiring": {"X", "sequence_lens", "initial_h", "initial_c"?, "Y", "Y_h", "Y_c"?},
                "axes": {...}, "rows": {...},
                "directions": [{"direction": "forward", "gates": {"i": {"W", "R", "Wb", "Rb",
                                "source_gate"}}, "peepholes"?: {"i", "o", "f"}}],
                "source": {...} | null}]}

Weights may be initializers or constant-foldable subgraphs (see converters.weights).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.annotations import (
    GATE_ORDERS,
    PEEPHOLE_ORDER,
    annotation_of,
    describe_node,
)
from converters.gates_text import to_text as render_text
from converters.reference import reference_gru, reference_lstm, reference_rnn, run_reference
from converters.weights import resolve, resolve_optional

FORMATS = ("json", "npz", "text")
_PASSED_THROUGH = (
    "op", "direction", "hidden_size", "input_size", "layout", "activations", "activation_alpha",
    "activation_beta", "clip", "linear_before_reset", "input_forget", "onnx_gate_order", "inputs", "axes", "wiring",
)


def recurrent_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type in GATE_ORDERS]


def split_node(model: onnx.ModelProto, node: onnx.NodeProto) -> dict[str, Any]:
    """Per-gate numpy matrices of one node: W [H, I], R [H, H], Wb [H], Rb [H] per direction and gate."""
    annotation = annotation_of(model, node)
    described = describe_node(model, node)  # wiring from the graph as it is now, never a stale copy
    inputs = list(node.input) + [""] * (8 - len(node.input))
    weight, recurrence = resolve(model, inputs[1]), resolve(model, inputs[2])
    hidden, gates = described["hidden_size"], GATE_ORDERS[node.op_type]
    count = len(gates)
    bias = resolve_optional(model, inputs[3])
    if bias is None:
        bias = np.zeros((weight.shape[0], 2 * count * hidden), dtype=weight.dtype)
    peepholes = resolve_optional(model, inputs[7]) if node.op_type == "LSTM" else None
    source_gates: dict[str, str | None] = {gate: None for gate in gates}
    if annotation is not None:
        source_gates.update({onnx_gate: src for src, onnx_gate in annotation["source"]["gate_map"].items()})

    directions = []
    for index, direction in enumerate(described["directions"]):
        split: dict[str, Any] = {"direction": direction, "gates": {}}
        for k, gate in enumerate(gates):
            rows = slice(k * hidden, (k + 1) * hidden)
            split["gates"][gate] = {
                "W": weight[index, rows],
                "R": recurrence[index, rows],
                "Wb": bias[index, rows],
                "Rb": bias[index, (count + k) * hidden:(count + k + 1) * hidden],
                "source_gate": source_gates[gate],
            }
        if peepholes is not None:
            split["peepholes"] = {
                gate: peepholes[index, k * hidden:(k + 1) * hidden] for k, gate in enumerate(PEEPHOLE_ORDER)
            }
        split["rows"] = described["gate_rows"][direction]
        directions.append(split)
    result = {"node": node.name, **{key: described[key] for key in _PASSED_THROUGH if key in described}}
    result["directions"] = directions
    # A schema 1 entry has no source wiring: read it as the empty wiring schema 2 writes for "nothing said".
    result["source"] = {"wiring": {}, **annotation["source"]} if annotation is not None else None
    return result


def split_gates_arrays(model: onnx.ModelProto) -> dict[str, Any]:
    """Like split_gates, but the matrices stay numpy arrays."""
    return {"nodes": [split_node(model, node) for node in recurrent_nodes(model)]}


def _listify(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.astype(np.float64).tolist() if np.issubdtype(value.dtype, np.floating) else value.tolist()
    if isinstance(value, dict):
        return {key: _listify(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_listify(item) for item in value]
    return value


def split_gates(model: onnx.ModelProto) -> dict[str, Any]:
    """The gates JSON (plain lists and numbers) of every recurrent node in ``model``."""
    return _listify(split_gates_arrays(model))  # type: ignore[no-any-return]


def to_json(model: onnx.ModelProto) -> str:
    return json.dumps(split_gates(model))


def to_npz(model: onnx.ModelProto) -> bytes:
    """An .npz with one array per ``<node>/<direction>/<gate>/<W|R|Wb|Rb>`` (and ``.../peepholes/<gate>``),
    and ``<node>/wiring``: the wiring JSON as a string."""
    arrays: dict[str, np.ndarray] = {}
    for node in split_gates_arrays(model)["nodes"]:
        for split in node["directions"]:
            prefix = f"{node['node']}/{split['direction']}"
            for gate, parts in split["gates"].items():
                for part in ("W", "R", "Wb", "Rb"):
                    arrays[f"{prefix}/{gate}/{part}"] = parts[part]
            for gate, vector in split.get("peepholes", {}).items():
                arrays[f"{prefix}/peepholes/{gate}"] = vector
        # A unicode (not object) array: np.load reads it without allow_pickle.
        arrays[f"{node['node']}/wiring"] = np.array(json.dumps(node["wiring"], sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def to_text(model: onnx.ModelProto) -> str:
    """A human-readable listing: every node's wiring, and per direction and gate its rows and matrices."""
    return render_text(split_gates_arrays(model))


def write(model: onnx.ModelProto, *, fmt: str = "json", path: str | Path | None = None) -> bytes:
    """Render the gates in ``fmt`` (json, npz or text); also write them to ``path`` when given."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown gates format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "npz":
        data = to_npz(model)
    else:
        data = (to_json(model) if fmt == "json" else to_text(model)).encode()
    if path is not None:
        Path(path).write_bytes(data)
    return data


__all__ = [
    "FORMATS", "recurrent_nodes", "reference_gru", "reference_lstm", "reference_rnn", "run_reference",
    "split_gates", "split_gates_arrays", "split_node", "to_json", "to_npz", "to_text", "write",
]
