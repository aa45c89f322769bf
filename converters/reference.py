"""Textbook numpy LSTM / GRU / RNN, computed from the split per-gate matrices.

One separate matmul per gate, written the way the equations read in the ONNX operator docs, so
that agreement with onnxruntime shows the split (converters.gates) is the real meaning of the
fused weights.  numpy + onnx at import; onnxruntime only when run_reference needs a model's
intermediate tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from converters.weights import NotConstantError, resolve

Activation = Callable[[np.ndarray], np.ndarray]
GateMatrices = Mapping[str, Mapping[str, np.ndarray]]

# name -> (uses alpha, uses beta, default alpha, default beta, function)
_ACTIVATIONS: dict[str, tuple[bool, bool, float, float, Callable[[np.ndarray, float, float], np.ndarray]]] = {
    "sigmoid": (False, False, 0.0, 0.0, lambda x, a, b: 1.0 / (1.0 + np.exp(-x))),
    "tanh": (False, False, 0.0, 0.0, lambda x, a, b: np.tanh(x)),
    "relu": (False, False, 0.0, 0.0, lambda x, a, b: np.maximum(x, 0.0)),
    "affine": (True, True, 1.0, 0.0, lambda x, a, b: a * x + b),
    "leakyrelu": (True, False, 0.01, 0.0, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (True, False, 1.0, 0.0, lambda x, a, b: np.where(x >= a, x, 0.0)),
    "scaledtanh": (True, True, 1.0, 1.0, lambda x, a, b: a * np.tanh(b * x)),
    "hardsigmoid": (True, True, 0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0.0, 1.0)),
    "elu": (True, False, 1.0, 0.0, lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1.0))),
    "softsign": (False, False, 0.0, 0.0, lambda x, a, b: x / (1.0 + np.abs(x))),
    "softplus": (False, False, 0.0, 0.0, lambda x, a, b: np.log1p(np.exp(x))),
}


def activations(
    names: Sequence[str], alphas: Sequence[float] | None = None, betas: Sequence[float] | None = None
) -> list[Activation]:
    """Activation callables; alpha/beta values are consumed in order by the functions that take them."""
    alpha_iter, beta_iter = iter(alphas or ()), iter(betas or ())
    result: list[Activation] = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise ValueError(f"activation {name!r} is not an ONNX recurrent activation")
        uses_alpha, uses_beta, alpha, beta, function = _ACTIVATIONS[key]
        alpha = next(alpha_iter, alpha) if uses_alpha else alpha
        beta = next(beta_iter, beta) if uses_beta else beta
        result.append(_bind(function, alpha, beta))
    return result


def _bind(function: Callable[[np.ndarray, float, float], np.ndarray], alpha: float, beta: float) -> Activation:
    return lambda x: function(x, alpha, beta)


def _steps(length: int, *, reverse: bool) -> range:
    return range(length - 1, -1, -1) if reverse else range(length)


def _pre(x: np.ndarray, h: np.ndarray, gate: Mapping[str, np.ndarray], clip: float | None) -> np.ndarray:
    value = x @ gate["W"].T + h @ gate["R"].T + gate["Wb"] + gate["Rb"]
    return np.clip(value, -clip, clip) if clip is not None else value


def _lengths(seq_lens: np.ndarray | None, steps: int, batch: int) -> np.ndarray:
    return np.full(batch, steps) if seq_lens is None else np.asarray(seq_lens).astype(np.int64)


def reference_lstm(
    x: np.ndarray,
    gates: GateMatrices,
    *,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    peepholes: Mapping[str, np.ndarray] | None = None,
    funcs: Sequence[Activation] | None = None,
    clip: float | None = None,
    input_forget: bool = False,
    reverse: bool = False,
    seq_lens: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction; x is [T, B, I]. Returns Y [T, B, H], last H [B, H], last C [B, H]."""
    f, g, h_act = funcs or activations(["Sigmoid", "Tanh", "Tanh"])
    steps, batch, _ = x.shape
    hidden = gates["i"]["W"].shape[0]
    h = np.zeros((batch, hidden)) if h0 is None else h0.astype(np.float64)
    c = np.zeros((batch, hidden)) if c0 is None else c0.astype(np.float64)
    p = peepholes or {name: np.zeros(hidden) for name in ("i", "o", "f")}
    lengths = _lengths(seq_lens, steps, batch)
    y = np.zeros((steps, batch, hidden))
    for t in _steps(steps, reverse=reverse):
        xt = x[t].astype(np.float64)
        i = f(_pre(xt, h, gates["i"], clip) + p["i"] * c)
        forget = 1.0 - i if input_forget else f(_pre(xt, h, gates["f"], clip) + p["f"] * c)
        candidate = g(_pre(xt, h, gates["c"], clip))
        c_new = forget * c + i * candidate
        o = f(_pre(xt, h, gates["o"], clip) + p["o"] * c_new)
        h_new = o * h_act(c_new)
        live = (t < lengths)[:, None]
        h, c = np.where(live, h_new, h), np.where(live, c_new, c)
        y[t] = np.where(live, h_new, 0.0)
    empty = (lengths == 0)[:, None]  # onnxruntime: a zero-length sequence ends in zero state, not h0/c0
    return y, np.where(empty, 0.0, h), np.where(empty, 0.0, c)


def reference_gru(
    x: np.ndarray,
    gates: GateMatrices,
    *,
    h0: np.ndarray | None = None,
    funcs: Sequence[Activation] | None = None,
    clip: float | None = None,
    linear_before_reset: bool = False,
    reverse: bool = False,
    seq_lens: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One direction; x is [T, B, I]. Returns Y [T, B, H] and last H [B, H]."""
    f, g = funcs or activations(["Sigmoid", "Tanh"])
    steps, batch, _ = x.shape
    hidden = gates["z"]["W"].shape[0]
    h = np.zeros((batch, hidden)) if h0 is None else h0.astype(np.float64)
    lengths = _lengths(seq_lens, steps, batch)
    y = np.zeros((steps, batch, hidden))
    gh = gates["h"]
    for t in _steps(steps, reverse=reverse):
        xt = x[t].astype(np.float64)
        z = f(_pre(xt, h, gates["z"], clip))
        r = f(_pre(xt, h, gates["r"], clip))
        if linear_before_reset:
            value = xt @ gh["W"].T + r * (h @ gh["R"].T + gh["Rb"]) + gh["Wb"]
        else:
            value = xt @ gh["W"].T + (r * h) @ gh["R"].T + gh["Rb"] + gh["Wb"]
        candidate = g(np.clip(value, -clip, clip) if clip is not None else value)
        h_new = (1.0 - z) * candidate + z * h
        live = (t < lengths)[:, None]
        h = np.where(live, h_new, h)
        y[t] = np.where(live, h_new, 0.0)
    return y, np.where((lengths == 0)[:, None], 0.0, h)


def reference_rnn(
    x: np.ndarray,
    gates: GateMatrices,
    *,
    h0: np.ndarray | None = None,
    funcs: Sequence[Activation] | None = None,
    clip: float | None = None,
    reverse: bool = False,
    seq_lens: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One direction; x is [T, B, I]. Returns Y [T, B, H] and last H [B, H]."""
    (f,) = funcs or activations(["Tanh"])
    steps, batch, _ = x.shape
    hidden = gates["i"]["W"].shape[0]
    h = np.zeros((batch, hidden)) if h0 is None else h0.astype(np.float64)
    lengths = _lengths(seq_lens, steps, batch)
    y = np.zeros((steps, batch, hidden))
    for t in _steps(steps, reverse=reverse):
        h_new = f(_pre(x[t].astype(np.float64), h, gates["i"], clip))
        live = (t < lengths)[:, None]
        h = np.where(live, h_new, h)
        y[t] = np.where(live, h_new, 0.0)
    return y, np.where((lengths == 0)[:, None], 0.0, h)


def intermediates(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Values of internal tensors ``names``, computed by onnxruntime with them exposed as outputs."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {info.name: info for info in list(inferred.graph.value_info) + list(inferred.graph.output)}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    # Only the nodes upstream of ``names``: a layout-1 recurrent node elsewhere (onnxruntime's CPU
    # kernels refuse layout 1) must not stop us reading another node's inputs.
    producers = {out: index for index, node in enumerate(model.graph.node) for out in node.output if out}
    keep: set[int] = set()
    stack = list(names)
    while stack:
        index = producers.get(stack.pop(), -1)
        if index >= 0 and index not in keep:
            keep.add(index)
            stack.extend(model.graph.node[index].input)
    del exposed.graph.node[:]
    exposed.graph.node.extend(node for index, node in enumerate(model.graph.node) if index in keep)
    del exposed.graph.output[:]
    for name in names:
        info = known.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        exposed.graph.output.append(info)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(list(names), dict(feeds)), strict=True))


def _value(model: onnx.ModelProto, name: str, computed: Mapping[str, np.ndarray]) -> np.ndarray | None:
    if not name:
        return None
    return computed[name] if name in computed else resolve(model, name)


def run_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reference outputs (by tensor name) of every recurrent node, fed its real inputs from onnxruntime."""
    from converters.gates import recurrent_nodes, split_node

    nodes = recurrent_nodes(model)
    dynamic: list[str] = []
    for node in nodes:
        for name in [node.input[0], *node.input[4:7]]:
            if not name or name in dynamic:
                continue
            try:
                resolve(model, name)
            except NotConstantError:
                dynamic.append(name)
    given = {name: np.asarray(feeds[name]) for name in dynamic if name in feeds}
    missing = [name for name in dynamic if name not in given]
    computed = {**given, **(intermediates(model, feeds, missing) if missing else {})}
    results: dict[str, np.ndarray] = {}
    for node in nodes:
        results.update(_run_node(model, node, split_node(model, node), computed))
    return results


def _run_node(
    model: onnx.ModelProto, node: onnx.NodeProto, split: dict[str, Any], computed: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    inputs = list(node.input) + [""] * (8 - len(node.input))
    x, seq_lens, h0, c0 = (_value(model, name, computed) for name in (inputs[0], inputs[4], inputs[5], inputs[6]))
    assert x is not None
    batch_major = split["layout"] == 1
    if batch_major:  # X [B, T, I]; initial states [B, D, H]
        x = x.transpose(1, 0, 2)
        h0 = None if h0 is None else h0.transpose(1, 0, 2)
        c0 = None if c0 is None else c0.transpose(1, 0, 2)
    names = split["activations"]
    per_direction = len(names) // len(split["directions"])
    alphas, betas = split.get("activation_alpha"), split.get("activation_beta")
    funcs = activations(names, alphas, betas)
    ys, hs, cs = [], [], []
    for index, direction in enumerate(split["directions"]):
        common: dict[str, Any] = {
            "h0": None if h0 is None else h0[index],
            "funcs": funcs[index * per_direction:(index + 1) * per_direction],
            "clip": split.get("clip"),
            "reverse": direction["direction"] == "reverse",
            "seq_lens": seq_lens,
        }
        if split["op"] == "LSTM":
            y, h, c = reference_lstm(
                x, direction["gates"], c0=None if c0 is None else c0[index], peepholes=direction.get("peepholes"),
                input_forget=bool(split.get("input_forget")), **common,
            )
            cs.append(c)
        elif split["op"] == "GRU":
            y, h = reference_gru(x, direction["gates"], linear_before_reset=bool(split["linear_before_reset"]), **common)
        else:
            y, h = reference_rnn(x, direction["gates"], **common)
        ys.append(y)
        hs.append(h)
    outputs = {"Y": np.stack(ys, axis=1), "Y_h": np.stack(hs), "Y_c": np.stack(cs) if cs else None}
    if batch_major:  # Y [B, T, D, H]; Y_h [B, D, H]
        outputs = {key: None if value is None else (value.transpose(2, 0, 1, 3) if key == "Y" else value.transpose(1, 0, 2))
                   for key, value in outputs.items()}
    results: dict[str, np.ndarray] = {}
    for name, key in zip(node.output, ("Y", "Y_h", "Y_c"), strict=False):
        value = outputs[key]
        if name and value is not None:
            results[name] = value
    return results
