"""Rebuild TF1 peephole LSTMCells that tf2onnx left as a Scan into fused ONNX LSTM nodes (no TF import).

tf2onnx 1.17's LSTM rewriter has no pattern for ``LSTMCell(use_peepholes=True)``, so dynamic_rnn over
such cells comes out as one Scan.  Their semantics are exactly ONNX LSTM with peepholes P (i and f
see c_{t-1}, o sees c_t), so we replace the Scan by one LSTM per stacked cell, built from the cell's
variables: kernel, bias, w_i_diag / w_f_diag / w_o_diag, plus the forget_bias constant found in the
loop body.  We only do this when the Scan is nothing else: zero initial states, one per-step output,
final states unused, and no cell_clip or num_proj (tf_graph.refuse_loops names those).  The parity
check against TensorFlow then proves the rebuilt model.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.keras_recurrent import blocks
from converters.tf_graph import Loaded, holds_matmul
from converters.weights import NotConstantError, resolve

_TF1_TO_ONNX = (0, 3, 2, 1)  # ONNX i, o, f, c from TF's i, j, f, o


def _peephole_cells(loaded: Loaded) -> list[str]:
    cells = sorted(name[: -len("/w_f_diag")] for name in loaded.variables if name.endswith("/w_f_diag"))
    return [cell for cell in cells if f"{cell}/kernel" in loaded.variables and f"{cell}/bias" in loaded.variables
            and not any(name.startswith(f"{cell}/projection/") for name in loaded.variables)
            and not any(f"/{cell.rsplit('/', 1)[-1]}/clip_by_value" in op for op in loaded.op_names)]


def _forget_bias(cell: str, loaded: Loaded) -> float | None:
    """The scalar LSTMCell adds to f (``<loop>/while/.../<cell>/add/y``), longest cell-name suffix first."""
    parts = cell.split("/")
    for start in range(len(parts)):
        suffix = "/".join(parts[start:]) + "/add/y"
        found = {value for name, value in loaded.scalars.items() if "/while/" in name and name.endswith("/" + suffix)}
        if len(found) == 1:
            return found.pop()
        if found:
            return None
    return None


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


def _rebuildable_scan(model: onnx.ModelProto, scan: onnx.NodeProto) -> str | None:
    """Why this Scan cannot be swapped for fused LSTMs, or None when it can."""
    scan_inputs = next((a.i for a in scan.attribute if a.name == "num_scan_inputs"), 0)
    states = len(scan.input) - scan_inputs
    if scan_inputs != 1 or len(scan.output) != states + 1:
        return "it scans more than one input or emits more than one sequence"
    consumed = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    if any(name in consumed for name in scan.output[:states]):
        return "its final states are used"
    if not all(_zero_state(model, name) for name in scan.input[:states]):
        return "it starts from a non-zero initial state"
    return None


def rebuild_peephole_scans(model: onnx.ModelProto, loaded: Loaded) -> list[str]:
    """Replace the one recurrent Scan by fused peephole LSTMs; returns the rebuilt cells' names."""
    cells = _peephole_cells(loaded)
    scans = [node for node in model.graph.node if node.op_type in ("Scan", "Loop")
             and any(a.type == onnx.AttributeProto.GRAPH and holds_matmul(a.g) for a in node.attribute)]
    if not cells or len(scans) != 1 or scans[0].op_type != "Scan" or _rebuildable_scan(model, scans[0]):
        return []
    scan = scans[0]
    body = next(a.g for a in scan.attribute if a.name == "body")
    if sum(node.op_type == "MatMul" for node in body.node) != len(cells):
        return []  # the loop computes something besides these cells
    forget = [_forget_bias(cell, loaded) for cell in cells]
    if any(value is None for value in forget):
        return []
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    current = scan.input[-1]
    for index, (cell, forget_bias) in enumerate(zip(cells, forget, strict=True)):
        kernel, bias = loaded.variables[f"{cell}/kernel"], loaded.variables[f"{cell}/bias"]
        hidden = kernel.shape[1] // 4
        size = kernel.shape[0] - hidden
        w = blocks(kernel[:size], 4, _TF1_TO_ONNX).T[None]
        r = blocks(kernel[size:], 4, _TF1_TO_ONNX).T[None]
        wb = blocks(bias, 4, _TF1_TO_ONNX).copy()
        wb[2 * hidden: 3 * hidden] += np.float32(forget_bias)  # ONNX f rows; TF adds forget_bias at run time
        b = np.concatenate([wb, np.zeros(4 * hidden, np.float32)])[None]
        diag = {gate: loaded.variables[f"{cell}/w_{gate}_diag"] for gate in ("i", "o", "f")}
        p = np.concatenate([diag["i"], diag["o"], diag["f"]])[None]  # ONNX peephole order i, o, f
        base = re.sub(r"[^A-Za-z0-9_/]", "_", cell)
        names = {}
        for key, value in (("W", w), ("R", r), ("B", b), ("P", p)):
            names[key] = f"{base}/rebuilt_{key}"
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), names[key]))
        y = f"{base}/LSTM_Y"
        nodes.append(helper.make_node("LSTM", [current, names["W"], names["R"], names["B"], "", "", "", names["P"]],
                                      [y], name=f"{base}/LSTM", hidden_size=hidden, direction="forward"))
        axes = f"{base}/squeeze_axes"
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
        last = index == len(cells) - 1
        current = scan.output[-1] if last else f"{base}/sequence"
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
