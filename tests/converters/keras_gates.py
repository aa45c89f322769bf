"""Per-gate blocks read straight off Keras variables, to hold converted nodes against (Keras 3 and tf-keras)."""

from __future__ import annotations

from typing import Any

import numpy as np

_LETTERS = {"LSTMCell": ("i", "f", "c", "o"), "GRUCell": ("z", "r", "h"), "SimpleRNNCell": ("i",)}


def cell_kind(cell: Any) -> str:
    return next(name for klass in type(cell).__mro__ if (name := klass.__name__) in _LETTERS)


def keras_blocks(cell: Any) -> dict[str, dict[str, np.ndarray]]:
    """W [H, I], R [H, H], Wb, Rb per gate of one Keras cell, keyed by the ONNX gate letter."""
    kind = cell_kind(cell)
    kernel, recurrent = np.asarray(cell.kernel.numpy()), np.asarray(cell.recurrent_kernel.numpy())
    hidden = recurrent.shape[0]
    letters = _LETTERS[kind]
    bias = np.asarray(cell.bias.numpy()) if cell.use_bias else np.zeros(len(letters) * hidden, np.float32)
    out = {}
    for k, gate in enumerate(letters):
        block = slice(k * hidden, (k + 1) * hidden)
        if kind == "GRUCell" and cell.reset_after:
            wb, rb = bias[0, block], bias[1, block]
        else:
            wb, rb = bias[block], np.zeros(hidden, np.float32)
        out[gate] = {"W": kernel[:, block].T, "R": recurrent[:, block].T, "Wb": wb, "Rb": rb}
    return out


def expected_nodes(layer: Any) -> list[list[Any]]:
    """Per fused node one call of ``layer`` becomes, its Keras cell per direction: Bidirectional gives one
    node of two directions, an RNN over StackedRNNCells one node per cell, anything else one node."""
    if any(klass.__name__ == "Bidirectional" for klass in type(layer).__mro__):
        return [[layer.forward_layer.cell, layer.backward_layer.cell]]
    if any(klass.__name__ == "StackedRNNCells" for klass in type(layer.cell).__mro__):
        return [[cell] for cell in layer.cell.cells]
    return [[layer.cell]]


def assert_gates_equal(node: dict[str, Any], cells: list[Any], where: str) -> None:
    """``node`` (one entry of gates.split_gates_arrays) holds exactly ``cells``' weights, per direction and gate."""
    assert len(node["directions"]) == len(cells), where
    for cell, direction in zip(cells, node["directions"], strict=True):
        for gate, blocks in keras_blocks(cell).items():
            got = direction["gates"][gate]
            for key in ("W", "R", "Wb", "Rb"):
                np.testing.assert_array_equal(got[key], blocks[key], err_msg=f"{where} {gate}.{key}")
