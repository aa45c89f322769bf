"""Recognise TF1 recurrent cells inside a while loop by what they compute (numpy + a tf_loops.Loop).

Every TF1 cell starts with ``MatMul(concat([x, h], 1), kernel)`` on a constant 2-D kernel, then a
BiasAdd.  What follows says which cell it is:

- LSTM (BasicLSTMCell, LSTMCell): ``i, j, f, o = split(z, 4)``; ``f`` gets scalar adds (forget_bias) and,
  with peepholes, ``w_f_diag * c_prev`` before its Sigmoid (``i`` likewise, ``o`` sees the new c);
  ``c = c_prev * sigmoid(f..) + sigmoid(i..) * tanh(j)``; ``h = tanh(c) * sigmoid(o..)``.
- GRU (GRUCell): ``r, u = split(sigmoid(z), 2)``; a second MatMul of ``concat([x, r * h])`` with the
  candidate kernel, BiasAdd, Tanh; ``h = u * h_prev + (1 - u) * c``.
- RNN (BasicRNNCell): ``h = tanh(z)``.

Names never decide anything; they only label the result (the Const a weight traces back to is the
variable it was frozen from).  What ONNX cannot express (cell_clip, num_proj, activations ONNX lacks) is
refused, naming the cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converters.keras_layers import UnsupportedLayerError
from converters.keras_recurrent import blocks
from converters.tf_loops import Loop, data_inputs

TF1_LSTM_ORDER = ("i", "j", "f", "o")
TF1_LSTM_GATE_MAP = {"i": "i", "j": "c", "f": "f", "o": "o"}
TF1_GRU_ORDER = ("r", "u", "c")
TF1_GRU_GATE_MAP = {"r": "r", "u": "z", "c": "h"}
_TF1_TO_ONNX = (0, 3, 2, 1)  # ONNX i, o, f, c from TF's i, j, f, o column blocks
_ADD = ("Add", "AddV2")
# TF activation ops that ONNX LSTM/GRU/RNN take as activations (same names, default alpha/beta).
ACTIVATIONS = ("Tanh", "Relu", "Sigmoid", "Softsign", "Softplus", "Elu")


class NotACell(Exception):
    """This MatMul is not the start of a cell we know (the loop is left to tf2onnx)."""


@dataclass
class Cell:
    op: str  # ONNX LSTM / GRU / RNN
    layer: str
    variables: dict[str, str]  # role -> Const (variable) name
    weights: dict[str, np.ndarray]  # W, R, B (and P), ONNX layout without the direction axis
    hidden: int
    x: str  # body tensors: the step input, previous and new states
    h_prev: str
    new_h: str
    c_prev: str | None = None
    new_c: str | None = None
    folded: dict[str, float] = field(default_factory=dict)
    gate_order: tuple[str, ...] = ()
    gate_map: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    activations: list[str] = field(default_factory=list)  # ONNX's f, g, h; the defaults are left out


def _out(node: Any, index: int = 0) -> str:
    return f"{node.name}:{index}"


def _one(found: list[Any], what: str) -> Any:
    if len(found) != 1:
        raise NotACell(what)
    return found[0]


def _layer(loop: Loop, matmul: Any, *names: str) -> str:
    """The cell's scope: its variables' common prefix, or where their names were lost in freezing (a lowered
    tf.function's captures are named after the loop's inputs) the scope of its MatMul."""
    if all(name.endswith(("kernel", "bias", "weights", "biases")) for name in names):
        return layer_of(*names)
    return re.sub(r"^.*/body/_\d+/", "", matmul.name.rsplit("/", 1)[0])


def layer_of(*names: str) -> str:
    parts = [name.split("/")[:-1] for name in names]
    common: list[str] = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return "/".join(common) or names[0]


def _other(loop: Loop, node: Any, this: str) -> str:
    """The operand of a binary node that is not ``this``."""
    inputs = data_inputs(node)
    same = [k for k, name in enumerate(inputs) if loop.skip_identity(name) == loop.skip_identity(this)]
    if len(inputs) != 2 or len(same) != 1:
        raise NotACell(f"{node.name} is not binary in {this}")
    return inputs[1 - same[0]]


def _biased(loop: Loop, matmul: Any) -> tuple[str, str, np.ndarray]:
    """(pre-activation tensor, bias Const name, bias) after ``MatMul -> BiasAdd``."""
    add = _one([n for n in loop.users(_out(matmul)) if n.op in ("BiasAdd", *_ADD)], f"{matmul.name}: no bias add")
    bias = loop.constant(_other(loop, add, _out(matmul)))
    if bias is None or bias[1].ndim != 1:
        raise NotACell(f"{add.name}: bias is not a constant vector")
    return _out(add), bias[0], bias[1]


def _concat(loop: Loop, matmul: Any) -> tuple[str, str]:
    """(x, h) of ``MatMul(concat([x, h], 1), kernel)``."""
    node = loop.node(loop.skip_identity(data_inputs(matmul)[0]))
    if node is None or node.op != "ConcatV2" or len(data_inputs(node)) != 3:
        raise NotACell(f"{matmul.name} does not multiply concat([x, h])")
    axis = loop.constant(data_inputs(node)[2])
    if axis is None or int(axis[1]) not in (1, -1):
        raise NotACell(f"{node.name} does not concatenate features")
    return data_inputs(node)[0], data_inputs(node)[1]


def _activation(loop: Loop, node: Any, want: str, cell: str) -> None:
    """``want`` is an op name, or "any" for the cell's own activation (any ONNX recurrent activation)."""
    if node.op != want and not (want == "any" and node.op in ACTIVATIONS):
        allowed = ", ".join(ACTIVATIONS) if want == "any" else want
        raise UnsupportedLayerError(f"TensorFlow recurrent layer {cell!r} uses {node.op} where ONNX's fused op "
                                    f"can only have {allowed}")


def _gate(loop: Loop, start: str, want: str, cell: str) -> tuple[str, float, list[tuple[str, np.ndarray, str]]]:
    """Walk a gate from its split output to its activation: (activated tensor, scalar adds, peepholes)."""
    current, scalar = start, 0.0
    peepholes: list[tuple[str, np.ndarray, str]] = []
    while True:
        user = _one(loop.users(current), f"gate {start} is used more than once")
        if user.op not in _ADD:
            _activation(loop, user, want, cell)
            return _out(user), scalar, peepholes
        other = _other(loop, user, current)
        constant = loop.constant(other)
        if constant is not None and constant[1].size == 1:
            scalar += float(constant[1])
        else:
            product = loop.node(loop.skip_identity(other))
            if product is None or product.op != "Mul":
                raise NotACell(f"{user.name}: gate {start} gets an addend that is not a peephole")
            a, b = data_inputs(product)
            diag, source = (loop.constant(a), b) if loop.constant(a) is not None else (loop.constant(b), a)
            if diag is None or diag[1].ndim != 1:
                raise NotACell(f"{product.name}: not a peephole")
            peepholes.append((diag[0], diag[1], loop.skip_identity(source)))
        current = _out(user)


def _product_with(loop: Loop, tensor: str) -> tuple[Any, str]:
    """The Mul using ``tensor`` and its other operand."""
    mul = _one([n for n in loop.users(tensor) if n.op == "Mul"], f"{tensor} is not multiplied once")
    return mul, _other(loop, mul, tensor)


def _clipped(loop: Loop, tensor: str) -> bool:
    return any(n.op in ("ClipByValue", "Minimum", "Maximum") for n in loop.users(tensor))


def lstm(loop: Loop, matmul: Any, kernel_name: str, kernel: np.ndarray) -> Cell:
    x, h_prev = _concat(loop, matmul)
    pre, bias_name, bias = _biased(loop, matmul)
    layer = _layer(loop, matmul, kernel_name, bias_name)
    split = _one([n for n in loop.users(pre) if n.op == "Split"], "no split")
    hidden = kernel.shape[1] // 4
    sig_i, add_i, peep_i = _gate(loop, _out(split, 0), "Sigmoid", layer)
    tanh_j, add_j, peep_j = _gate(loop, _out(split, 1), "any", layer)
    activation = loop.node(tanh_j).op  # TF1 LSTM cells apply their activation to j and to the new c
    sig_f, forget, peep_f = _gate(loop, _out(split, 2), "Sigmoid", layer)
    keep, c_prev = _product_with(loop, sig_f)
    take = _one([n for n in loop.users(sig_i) if n.op == "Mul"], "sigmoid(i) unused")
    new_c_node = _one([n for n in loop.users(_out(keep)) if n.op in _ADD], "no new c")
    if loop.skip_identity(_other(loop, new_c_node, _out(keep))) != loop.skip_identity(_out(take)):
        raise NotACell(f"{new_c_node.name} is not f * c_prev + i * j")
    new_c = _out(new_c_node)
    features = ["use_peepholes"] if peep_i or peep_f else []
    if _clipped(loop, new_c):
        features.append("cell_clip: TF clips the cell state, ONNX LSTM's clip bounds the gate pre-activations")
    sig_o, add_o, peep_o = _gate(loop, _out(split, 3), "Sigmoid", layer)
    tanh_c = next((n for n in loop.users(new_c) if n.op == activation), None)
    new_h_node, _ = _product_with(loop, sig_o)
    new_h = _out(new_h_node)
    if any(n.op == "MatMul" and loop.constant(data_inputs(n)[1]) is not None for n in loop.users(new_h)):
        features.append("num_proj: the projected output feeds the recurrence, which ONNX LSTM cannot express")
    if len(features) > (1 if features[:1] == ["use_peepholes"] else 0):
        raise UnsupportedLayerError(
            f"TensorFlow recurrent layer {layer!r} ({', '.join(features)}) cannot be one fused ONNX LSTM. "
            "Rebuild it without cell_clip/num_proj (or convert with tf2onnx alone, which keeps a Loop).")
    if tanh_c is None or loop.skip_identity(_other(loop, new_h_node, sig_o)) != _out(tanh_c):
        raise NotACell(f"{new_h_node.name} is not activation(c) * sigmoid(o)")
    if add_i or add_j or add_o or peep_j:
        raise NotACell(f"{layer}: constants added to the i, j or o gates")
    peepholes = {"i": peep_i, "f": peep_f, "o": peep_o}
    sources = {"i": c_prev, "f": c_prev, "o": new_c}
    fitting = all(len(found) == 1 and found[0][2] == loop.skip_identity(sources[g]) and found[0][1].shape == (hidden,)
                  for g, found in peepholes.items())
    if any(peepholes.values()) and not fitting:
        raise NotACell(f"{layer}: peepholes other than w_i/w_f on c_prev and w_o on c")
    size = kernel.shape[0] - hidden
    wb = blocks(bias, 4, _TF1_TO_ONNX).astype(np.float32)
    wb[2 * hidden: 3 * hidden] += np.float32(forget)  # the ONNX f rows; TF adds forget_bias at run time
    weights = {"W": blocks(kernel[:size], 4, _TF1_TO_ONNX).T, "R": blocks(kernel[size:], 4, _TF1_TO_ONNX).T,
               "B": np.concatenate([wb, np.zeros(4 * hidden, np.float32)])}
    variables = {"kernel": kernel_name, "bias": bias_name}
    notes = "TF1 LSTM cell: W/R split from kernel rows [:I] and [I:]; forget_bias folded into the f rows of Wb"
    if any(peepholes.values()):
        weights["P"] = np.concatenate([peepholes[g][0][1] for g in ("i", "o", "f")])
        variables.update({f"w_{g}_diag": peepholes[g][0][0] for g in ("i", "f", "o")})
        notes += "; peepholes P = [w_i_diag, w_o_diag, w_f_diag]"
    return Cell("LSTM", layer, variables, weights, hidden, x, h_prev, new_h, c_prev, new_c,
                {"forget_bias": round(forget, 6)}, TF1_LSTM_ORDER, dict(TF1_LSTM_GATE_MAP), notes,
                ["Sigmoid", activation, activation])


def gru(loop: Loop, matmul: Any, kernel_name: str, kernel: np.ndarray) -> tuple[Cell, Any]:
    """A GRUCell from its gates MatMul; also returns the candidate MatMul it consumed."""
    x, h_prev = _concat(loop, matmul)
    pre, bias_name, bias = _biased(loop, matmul)
    sigmoid = _one([n for n in loop.users(pre) if n.op == "Sigmoid"], "no sigmoid")
    split = _one([n for n in loop.users(_out(sigmoid)) if n.op == "Split"], "no split")
    hidden = kernel.shape[1] // 2
    _, r_state = None, _out(_product_with(loop, _out(split, 0))[0])
    concat = _one([n for n in loop.users(r_state) if n.op == "ConcatV2"], "r * h not concatenated")
    candidate = _one([n for n in loop.users(_out(concat)) if n.op == "MatMul"], "no candidate MatMul")
    found = loop.constant(data_inputs(candidate)[1])
    if found is None or found[1].shape != (kernel.shape[0], hidden) \
            or loop.skip_identity(data_inputs(concat)[0]) != loop.skip_identity(x):
        raise NotACell(f"{candidate.name} is not the GRU candidate")
    candidate_name, candidate_kernel = found
    c_pre, c_bias_name, c_bias = _biased(loop, candidate)
    layer = _layer(loop, matmul, kernel_name, candidate_name)
    tanh = _one(loop.users(c_pre), "candidate used more than once")
    _activation(loop, tanh, "any", layer)
    mixed, _ = _product_with(loop, _out(tanh))
    new_h = _out(_one([n for n in loop.users(_out(mixed)) if n.op in _ADD], "no new h"))
    size = kernel.shape[0] - hidden
    # GRUCell: r, u = split(gates); ONNX rows are z (= u), r, h (= candidate).
    full = np.concatenate([kernel[:, hidden:], kernel[:, :hidden], candidate_kernel], axis=1)
    full_bias = np.concatenate([bias[hidden:], bias[:hidden], c_bias])
    weights = {"W": full[:size].T, "R": full[size:].T,
               "B": np.concatenate([full_bias, np.zeros(3 * hidden, np.float32)])}
    variables = {"gates/kernel": kernel_name, "gates/bias": bias_name, "candidate/kernel": candidate_name,
                 "candidate/bias": c_bias_name}
    return Cell("GRU", layer, variables, weights, hidden, x, h_prev, new_h, gate_order=TF1_GRU_ORDER,
                gate_map=dict(TF1_GRU_GATE_MAP), notes="TF1 GRUCell: gates/kernel holds r then u; linear_before_reset=0",
                activations=["Sigmoid", tanh.op]), candidate


def rnn(loop: Loop, matmul: Any, kernel_name: str, kernel: np.ndarray) -> Cell:
    x, h_prev = _concat(loop, matmul)
    pre, bias_name, bias = _biased(loop, matmul)
    layer = _layer(loop, matmul, kernel_name, bias_name)
    activation = _one(loop.users(pre), "pre-activation used more than once")
    _activation(loop, activation, "any", layer)
    hidden = kernel.shape[1]
    size = kernel.shape[0] - hidden
    weights = {"W": kernel[:size].T, "R": kernel[size:].T, "B": np.concatenate([bias, np.zeros(hidden, np.float32)])}
    return Cell("RNN", layer, {"kernel": kernel_name, "bias": bias_name}, weights, hidden, x, h_prev,
                _out(activation), gate_order=("i",), gate_map={"i": "i"}, notes="TF1 BasicRNNCell",
                activations=[activation.op])


def find_cells(loop: Loop, *, lenient: bool = False) -> list[Cell]:
    """Every cell in the loop body, in no particular order.

    NotACell when a MatMul on a constant kernel is not a cell, unless ``lenient`` (a whole graph, where
    dense layers are MatMuls too: those are skipped).
    """
    cells: list[Cell] = []
    taken: set[str] = set()
    matmuls = []
    for node in loop.body.values():
        if node.op != "MatMul" or node.attr["transpose_a"].b or node.attr["transpose_b"].b:
            continue
        found = loop.constant(data_inputs(node)[1])
        if found is not None and found[1].ndim == 2:
            matmuls.append((node, *found))
    for node, name, kernel in matmuls:  # LSTMs and GRUs first: a GRU's candidate looks like a BasicRNNCell
        try:
            after = loop.users(_biased(loop, node)[0])
            then = [n.op for n in loop.users(_out(after[0]))] if len(after) == 1 else []
            if [n.op for n in after] == ["Split"] and kernel.shape[1] % 4 == 0:
                cells.append(lstm(loop, node, name, kernel))
                taken.add(node.name)
            elif [n.op for n in after] == ["Sigmoid"] and then == ["Split"] and kernel.shape[1] % 2 == 0:
                cell, candidate = gru(loop, node, name, kernel)
                cells.append(cell)
                taken |= {node.name, candidate.name}
        except NotACell:
            if not lenient:
                raise
            taken.add(node.name)
    for node, name, kernel in matmuls:
        if node.name not in taken:
            try:
                cells.append(rnn(loop, node, name, kernel))
            except NotACell:
                if not lenient:
                    raise
    return cells
