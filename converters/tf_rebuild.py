"""Rebuild TF1 cells that tf2onnx left inside a Scan as fused ONNX LSTM/GRU/RNN nodes (no TF import).

tf2onnx 1.17 fuses single BasicLSTMCell/LSTMCell/GRUCell loops and same-kind LSTM stacks, but leaves a
Scan for ``LSTMCell(use_peepholes=True)``, GRUCell stacks, mixed MultiRNNCell stacks and BasicRNNCell.
Those cells are exactly ONNX LSTM (peepholes P: i and f see c_{t-1}, o sees c_t), GRU with
linear_before_reset=0, and RNN with tanh, so we swap the Scan for one fused node per stacked cell,
built from the cell's variables (and, for LSTMs, the forget_bias constant found in the loop body).
Only when the Scan is nothing else: zero initial states, one per-step output, final states unused,
no cell_clip or num_proj (tf_graph.refuse_loops names those).  Parity against TF proves the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.keras_recurrent import blocks
from converters.tf_graph import Loaded, holds_matmul, unmatched_cells
from converters.weights import NotConstantError, resolve

_TF1_TO_ONNX = (0, 3, 2, 1)  # ONNX i, o, f, c from TF's i, j, f, o


@dataclass
class Rebuilt:
    op: str
    weights: dict[str, np.ndarray]  # W, R, B (and P) with the direction axis
    hidden: int
    matmuls: int  # MatMuls the cell puts in the loop body


def _forget_bias(cell: str, loaded: Loaded) -> float | None:
    """The one float scalar in the cell's loop-body scope (LSTMCell ``add/y``, BasicLSTMCell ``Const_1``)."""
    parts = cell.split("/")
    for start in range(len(parts)):
        scope = "/" + "/".join(parts[start:]) + "/"
        found = {value for name, value in loaded.scalars.items() if "/while/" in name and scope in name}
        if found:
            return found.pop() if len(found) == 1 else None
    return None


def _lstm(cell: str, loaded: Loaded) -> Rebuilt | None:
    kernel, bias = loaded.variables.get(f"{cell}/kernel"), loaded.variables.get(f"{cell}/bias")
    forget = _forget_bias(cell, loaded)
    if kernel is None or bias is None or forget is None:
        return None
    hidden = kernel.shape[1] // 4
    size = kernel.shape[0] - hidden
    wb = blocks(bias, 4, _TF1_TO_ONNX).copy()
    wb[2 * hidden: 3 * hidden] += np.float32(forget)  # ONNX f rows; TF adds forget_bias at run time
    weights = {"W": blocks(kernel[:size], 4, _TF1_TO_ONNX).T, "R": blocks(kernel[size:], 4, _TF1_TO_ONNX).T,
               "B": np.concatenate([wb, np.zeros(4 * hidden, np.float32)])}
    if f"{cell}/w_f_diag" in loaded.variables:
        weights["P"] = np.concatenate([loaded.variables[f"{cell}/w_{g}_diag"] for g in ("i", "o", "f")])
    return Rebuilt("LSTM", weights, hidden, 1)


def _gru(cell: str, loaded: Loaded) -> Rebuilt | None:
    names = [f"{cell}/gates/kernel", f"{cell}/gates/bias", f"{cell}/candidate/kernel", f"{cell}/candidate/bias"]
    if not all(name in loaded.variables for name in names):
        return None
    gates, gates_bias, candidate, candidate_bias = (loaded.variables[name] for name in names)
    hidden = candidate.shape[1]
    size = candidate.shape[0] - hidden
    # GRUCell: r, u = split(gates); ONNX rows are z (= u), r, h (= candidate).
    full = np.concatenate([gates[:, hidden:], gates[:, :hidden], candidate], axis=1)
    bias = np.concatenate([gates_bias[hidden:], gates_bias[:hidden], candidate_bias])
    weights = {"W": full[:size].T, "R": full[size:].T, "B": np.concatenate([bias, np.zeros(3 * hidden, np.float32)])}
    return Rebuilt("GRU", weights, hidden, 2)


def _rnn(cell: str, loaded: Loaded) -> Rebuilt | None:
    kernel, bias = loaded.variables.get(f"{cell}/kernel"), loaded.variables.get(f"{cell}/bias")
    if kernel is None or bias is None or kernel.shape[1] != bias.shape[0]:
        return None
    hidden = kernel.shape[1]
    size = kernel.shape[0] - hidden
    return Rebuilt("RNN", {"W": kernel[:size].T, "R": kernel[size:].T,
                           "B": np.concatenate([bias, np.zeros(hidden, np.float32)])}, hidden, 1)


def _rebuild(cell: str, loaded: Loaded) -> Rebuilt | None:
    if any(name.startswith(f"{cell}/projection/") for name in loaded.variables) \
            or any(f"/{cell.rsplit('/', 1)[-1]}/clip_by_value" in op for op in loaded.op_names):
        return None
    if f"{cell}/gates/kernel" in loaded.variables:
        return _gru(cell, loaded)
    kernel = loaded.variables.get(f"{cell}/kernel")
    if kernel is None or kernel.ndim != 2:
        return None
    return _lstm(cell, loaded) if kernel.shape[1] % 4 == 0 and cell.endswith("lstm_cell") else _rnn(cell, loaded)


def _zero_state(model: onnx.ModelProto, name: str) -> bool:
    try:
        return not np.any(resolve(model, name))
    except NotConstantError:
        producer = next((node for node in model.graph.node if name in node.output), None)
        if producer is None or producer.op_type not in ("Expand", "Tile"):
            return False
        try:
            return not np.any(resolve(model, producer.input[0]))
        except NotConstantError:
            return False


def scan_obstacle(model: onnx.ModelProto, scan: onnx.NodeProto) -> str | None:
    """Why this Scan cannot be swapped for fused nodes, or None when it can."""
    scan_inputs = next((a.i for a in scan.attribute if a.name == "num_scan_inputs"), 0)
    states = len(scan.input) - scan_inputs
    if scan_inputs != 1 or len(scan.output) != states + 1:
        return "the loop scans more than one input or emits more than one sequence"
    consumed = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    if any(name in consumed for name in scan.output[:states]):
        return "the loop's final states are used (only the per-step outputs can be rebuilt)"
    if not all(_zero_state(model, name) for name in scan.input[:states]):
        return "the loop starts from a non-zero initial state"
    return None


def _natural(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def rebuild_scans(model: onnx.ModelProto, loaded: Loaded) -> list[str]:
    """Replace the one recurrent Scan by fused nodes for its unmatched cells; returns their names."""
    cells = sorted(unmatched_cells(loaded), key=_natural)
    scans = [node for node in model.graph.node if node.op_type in ("Scan", "Loop")
             and any(a.type == onnx.AttributeProto.GRAPH and holds_matmul(a.g) for a in node.attribute)]
    if not cells or len(scans) != 1 or scans[0].op_type != "Scan" or scan_obstacle(model, scans[0]):
        return []
    scan = scans[0]
    rebuilt = [_rebuild(cell, loaded) for cell in cells]
    body = next(a.g for a in scan.attribute if a.name == "body")
    if any(r is None for r in rebuilt) or \
            sum(node.op_type == "MatMul" for node in body.node) != sum(r.matmuls for r in rebuilt if r):
        return []  # a cell we cannot rebuild, or the loop computes something besides these cells
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    current = scan.input[-1]
    for index, (cell, spec) in enumerate(zip(cells, rebuilt, strict=True)):
        assert spec is not None
        base = re.sub(r"[^A-Za-z0-9_/]", "_", cell)
        names = {}
        for key, value in spec.weights.items():
            names[key] = f"{base}/rebuilt_{key}"
            graph.initializer.append(numpy_helper.from_array(value[None].astype(np.float32), names[key]))
        inputs = [current, names["W"], names["R"], names["B"]]
        if "P" in names:
            inputs += ["", "", "", names["P"]]
        attrs: dict[str, Any] = {"linear_before_reset": 0} if spec.op == "GRU" else {}
        y = f"{base}/{spec.op}_Y"
        nodes.append(helper.make_node(spec.op, inputs, [y], name=f"{base}/{spec.op}", hidden_size=spec.hidden,
                                      direction="forward", **attrs))
        axes = f"{base}/squeeze_axes"
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
        current = scan.output[-1] if index == len(cells) - 1 else f"{base}/sequence"
        nodes.append(helper.make_node("Squeeze", [y, axes], [current], name=f"{base}/squeeze_directions"))
    position = list(graph.node).index(scan)
    graph.node.remove(scan)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    _prune(graph)
    return cells


def _prune(graph: onnx.GraphProto) -> None:
    """Drop what only fed the Scan (zero-state builders, loop counters)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(name in used for name in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
