"""Building fused ONNX recurrent weights and nodes from a source framework's per-gate weights.

A source framework stores each gate's matrices in its own order (PyTorch LSTM i, f, g, o; Keras
i, f, c, o; TF1 i, j, f, o).  ``to_onnx_weights`` takes them per direction and source gate and
lays them out in ONNX's W [D, G·H, I], R [D, G·H, H], B [D, 2·G·H] with ONNX's gate order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from converters.annotations import GATE_ORDERS

SourceGates = Mapping[str, Mapping[str, np.ndarray]]  # source gate -> {"W": [H, I], "R": [H, H], "Wb": [H], "Rb": [H]}


def split_rows(matrix: np.ndarray, gate_order: Sequence[str]) -> dict[str, np.ndarray]:
    """Split a fused [G·H, ...] matrix (gates stacked along axis 0) into {gate: [H, ...]}."""
    count = len(gate_order)
    if matrix.shape[0] % count:
        raise ValueError(f"fused matrix with {matrix.shape[0]} rows cannot hold {count} gates")
    hidden = matrix.shape[0] // count
    return {gate: matrix[k * hidden:(k + 1) * hidden] for k, gate in enumerate(gate_order)}


def to_onnx_weights(
    op: str, directions: Sequence[SourceGates], gate_map: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX (W, R, B) from per-direction source gates, reordered by ``gate_map`` (source -> ONNX gate)."""
    onnx_gates = GATE_ORDERS[op]
    by_onnx = {onnx_gate: source for source, onnx_gate in gate_map.items()}
    if sorted(by_onnx) != sorted(onnx_gates):
        raise ValueError(f"gate_map {dict(gate_map)} does not cover the {op} gates {list(onnx_gates)}")
    weights, recurrences, biases = [], [], []
    for gates in directions:
        ordered = [gates[by_onnx[gate]] for gate in onnx_gates]
        weights.append(np.concatenate([part["W"] for part in ordered]))
        recurrences.append(np.concatenate([part["R"] for part in ordered]))
        biases.append(np.concatenate([part["Wb"] for part in ordered] + [part["Rb"] for part in ordered]))
    return np.stack(weights), np.stack(recurrences), np.stack(biases)


def make_recurrent_node(
    *,
    op: str,
    name: str,
    x: str,
    weights: tuple[np.ndarray, np.ndarray, np.ndarray],
    outputs: Sequence[str],
    direction: str = "forward",
    initial_h: str = "",
    initial_c: str = "",
    peepholes: np.ndarray | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """A fused LSTM/GRU/RNN node (layout 0) and the initializers it reads, named after ``name``."""
    weight, recurrence, bias = weights
    hidden = recurrence.shape[-1]
    dtype = weight.dtype
    initializers = [
        numpy_helper.from_array(weight.astype(dtype), f"{name}.W"),
        numpy_helper.from_array(recurrence.astype(dtype), f"{name}.R"),
        numpy_helper.from_array(bias.astype(dtype), f"{name}.B"),
    ]
    inputs = [x, f"{name}.W", f"{name}.R", f"{name}.B", "", initial_h]
    if op == "LSTM":
        inputs.append(initial_c)
        if peepholes is not None:
            initializers.append(numpy_helper.from_array(peepholes.astype(dtype), f"{name}.P"))
            inputs.append(f"{name}.P")
    while inputs and not inputs[-1]:
        inputs.pop()
    node = onnx.helper.make_node(
        op, inputs, list(outputs), name=name, hidden_size=int(hidden), direction=direction, layout=0,
        **dict(attributes or {}),
    )
    return node, initializers
