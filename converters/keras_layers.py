"""One ONNX emitter per Keras layer type, over a small graph builder.

The emitters read layers through the API Keras 3 and tf-keras 2.x share (class name, ``get_config``,
variables, ``cell``), so this module imports neither; keras.py does.  A layer we do not know raises
UnsupportedLayerError naming it: keras.py decides whether another path can take the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters import UnsupportedSourceError
from converters.keras_recurrent import (
    GRU_GATE_MAP,
    KERAS_GRU_ORDER,
    KERAS_LSTM_ORDER,
    LSTM_GATE_MAP,
    SIMPLE_RNN_GATE_MAP,
    SIMPLE_RNN_ORDER,
    gru_weights,
    lstm_weights,
    simple_rnn_weights,
)

RECURRENT_LAYERS = {"LSTM", "GRU", "SimpleRNN", "Bidirectional", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}
IDENTITY_LAYERS = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                   "AlphaDropout", "ActivityRegularization", "InputLayer"}


class UnsupportedLayerError(UnsupportedSourceError):
    """A layer (named in the message) this converter cannot express faithfully in ONNX."""


@dataclass
class RecurrentRecord:
    """What the annotation of one fused node needs to say about its Keras layer."""

    node_name: str
    layer: str
    variables: dict[str, str]
    source_gate_order: tuple[str, ...]
    gate_map: dict[str, str]
    notes: str


@dataclass
class GraphBuilder:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    recurrent: list[RecurrentRecord] = field(default_factory=list)
    # tf-keras activations need a tf.Tensor, Keras 3 ones take numpy: keras.py supplies the wrapper.
    to_tensor: Callable[[np.ndarray], Any] = lambda array: array
    _taken: set[str] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_./]", "_", base)
        name, index = base, 0
        while name in self._taken:
            index += 1
            name = f"{base}_{index}"
        self._taken.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(self, op: str, inputs: list[str], *, base: str, outputs: int = 1, **attrs: Any) -> list[str]:
        name = self.fresh(base)
        names = [f"{name}:{k}" if outputs > 1 else name for k in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, **attrs))
        return names


def variable_name(variable: Any) -> str:
    """Keras 3 variables have a ``path`` (``lstm/lstm_cell/kernel``); tf-keras ones a ``name`` ending in :0."""
    path = getattr(variable, "path", None)
    return str(path) if path else re.sub(r":\d+$", "", str(variable.name))


def value(variable: Any) -> np.ndarray:
    return np.asarray(variable.numpy(), dtype=np.float32)


def activation_name(layer: Any, key: str) -> str:
    config = layer.get_config()
    spec = config.get(key, "linear")
    if spec is None:
        return "linear"
    if isinstance(spec, dict):  # serialized builtin in some Keras versions
        spec = spec.get("config", {}).get("name", spec.get("class_name"))
    return str(spec)


def hard_sigmoid_params(b: GraphBuilder, function: Callable[[Any], Any]) -> tuple[float, float]:
    """Keras 3 hard_sigmoid is relu6(x+3)/6 (alpha 1/6), tf-keras uses 0.2: measure, don't assume."""
    points = b.to_tensor(np.array([-1.0, 0.0, 1.0, -50.0, 50.0], np.float32))
    probe = np.asarray(function(points), dtype=np.float64)
    if abs(probe[3]) > 1e-6 or abs(probe[4] - 1.0) > 1e-6:
        raise UnsupportedLayerError(f"hard_sigmoid variant saturating at {probe[3]:g}/{probe[4]:g}, not 0/1")
    alpha, beta = float((probe[2] - probe[0]) / 2.0), float(probe[1])
    # The float32 probe is off in the 8th digit; snap to the known variants so the attribute reads clean.
    for known in (0.2, 1.0 / 6.0):
        if abs(alpha - known) < 1e-6:
            alpha = known
    return alpha, beta


_PLAIN = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus", "softsign": "Softsign"}


def emit_activation(b: GraphBuilder, x: str, name: str, *, layer: Any, key: str, where: str) -> str:
    if name == "linear":
        return x
    if name in _PLAIN:
        return b.add(_PLAIN[name], [x], base=f"{where}/{name}")[0]
    if name == "softmax":
        return b.add("Softmax", [x], base=f"{where}/softmax", axis=-1)[0]
    if name == "hard_sigmoid":
        alpha, beta = hard_sigmoid_params(b, getattr(layer, key))
        return b.add("HardSigmoid", [x], base=f"{where}/hard_sigmoid", alpha=alpha, beta=beta)[0]
    raise UnsupportedLayerError(f"layer {where!r}: activation {name!r} is not supported")


def emit_dense(b: GraphBuilder, layer: Any, x: str) -> str:
    y = b.add("MatMul", [x, b.const(f"{layer.name}/kernel", value(layer.kernel))], base=f"{layer.name}/MatMul")[0]
    if layer.use_bias:
        y = b.add("Add", [y, b.const(f"{layer.name}/bias", value(layer.bias))], base=f"{layer.name}/BiasAdd")[0]
    return emit_activation(b, y, activation_name(layer, "activation"), layer=layer, key="activation",
                           where=layer.name)


def emit_prelu(b: GraphBuilder, layer: Any, x: str) -> str:
    # Keras computes relu(x) - alpha * relu(-x), which is exactly ONNX PRelu with slope alpha.
    return b.add("PRelu", [x, b.const(f"{layer.name}/alpha", value(layer.alpha))], base=layer.name)[0]


def emit_simple(b: GraphBuilder, layer: Any, x: str) -> str:
    kind, config = type(layer).__name__, layer.get_config()
    if kind in IDENTITY_LAYERS:
        return x
    if kind == "Activation":
        return emit_activation(b, x, activation_name(layer, "activation"), layer=layer, key="activation",
                               where=layer.name)
    if kind == "Dense":
        return emit_dense(b, layer, x)
    if kind == "PReLU":
        return emit_prelu(b, layer, x)
    if kind == "TimeDistributed" and type(layer.layer).__name__ in ("Dense", "Activation", "Dropout"):
        return emit_simple(b, layer.layer, x)  # these act on the last axis: per step is the same op
    if kind == "Embedding":
        if config.get("mask_zero"):
            raise UnsupportedLayerError(f"layer {layer.name!r} (Embedding): mask_zero=True masks the layers after "
                                        "it, which ONNX recurrent ops cannot express (sequence_lens is not a mask)")
        table = b.const(f"{layer.name}/embeddings", value(layer.embeddings))
        return b.add("Gather", [table, x], base=layer.name, axis=0)[0]
    if kind == "Flatten":
        return b.add("Flatten", [x], base=layer.name, axis=1)[0]
    if kind == "Reshape":
        shape = np.array([0, *config["target_shape"]], np.int64)
        return b.add("Reshape", [x, b.const(f"{layer.name}/shape", shape)], base=layer.name)[0]
    if kind == "Softmax" and config.get("axis", -1) in (-1, [-1]):
        return b.add("Softmax", [x], base=layer.name, axis=-1)[0]
    if kind == "ReLU" and not config.get("max_value") and not config.get("threshold") \
            and not config.get("negative_slope"):
        return b.add("Relu", [x], base=layer.name)[0]
    if kind == "LeakyReLU":
        slope = config.get("negative_slope", config.get("alpha", 0.3))
        return b.add("LeakyRelu", [x], base=layer.name, alpha=float(slope))[0]
    raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}) is not supported by the Keras converter")


def _recurrent_activations(b: GraphBuilder, layer: Any, kind: str) -> tuple[list[str], list[float], list[float]]:
    keys = {"LSTM": ("recurrent_activation", "activation", "activation"),
            "GRU": ("recurrent_activation", "activation"), "SimpleRNN": ("activation",)}[kind]
    names, alphas, betas = [], [], []
    for key in keys:
        name = activation_name(layer, key)
        if name in _PLAIN:
            names.append(_PLAIN[name])
        elif name == "hard_sigmoid":
            alpha, beta = hard_sigmoid_params(b, getattr(layer.cell, key))
            names.append("HardSigmoid")
            alphas.append(alpha)
            betas.append(beta)
        elif name == "linear":
            names.append("Affine")
            alphas.append(1.0)
            betas.append(0.0)
        else:
            raise UnsupportedLayerError(f"layer {layer.name!r}: {key} {name!r} has no ONNX {kind} equivalent")
    return names, alphas, betas


def _direction_weights(layer: Any, kind: str) -> tuple[tuple[np.ndarray, ...], dict[str, str]]:
    cell = layer.cell
    kernel, recurrent = value(cell.kernel), value(cell.recurrent_kernel)
    bias = value(cell.bias) if cell.use_bias else None
    names = {"kernel": variable_name(cell.kernel), "recurrent_kernel": variable_name(cell.recurrent_kernel)}
    if cell.use_bias:
        names["bias"] = variable_name(cell.bias)
    if kind == "LSTM":
        return lstm_weights(kernel, recurrent, bias), names
    if kind == "GRU":
        return gru_weights(kernel, recurrent, bias, reset_after=bool(cell.reset_after)), names
    return simple_rnn_weights(kernel, recurrent, bias), names


def _check_recurrent(layer: Any, *, inside_bidirectional: bool) -> str:
    kind = type(layer).__name__
    if kind not in ("LSTM", "GRU", "SimpleRNN"):
        raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}) is not supported by the Keras converter")
    if getattr(layer, "stateful", False):
        raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}): stateful=True is not supported")
    if getattr(layer, "return_state", False):
        raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}): return_state=True is not supported")
    if layer.go_backwards and not inside_bidirectional:
        raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}): go_backwards=True outside Bidirectional "
                                    "returns time-reversed sequences, which is not supported")
    return kind


def emit_recurrent(b: GraphBuilder, layer: Any, x: str) -> str:
    """Batch-first Keras input -> Transpose -> one fused node (layout 0) -> batch-first output."""
    if type(layer).__name__ == "Bidirectional":
        if layer.merge_mode != "concat":
            raise UnsupportedLayerError(f"layer {layer.name!r} (Bidirectional): merge_mode "
                                        f"{layer.merge_mode!r} is not supported (only 'concat')")
        parts = [layer.forward_layer, layer.backward_layer]
        if parts[0].go_backwards or not parts[1].go_backwards:
            raise UnsupportedLayerError(f"layer {layer.name!r} (Bidirectional): unexpected go_backwards setup")
        kinds = {_check_recurrent(part, inside_bidirectional=True) for part in parts}
        if len(kinds) != 1:
            raise UnsupportedLayerError(f"layer {layer.name!r} (Bidirectional): mixed {sorted(kinds)} directions")
        direction, prefixes = "bidirectional", ["forward.", "reverse."]
    else:
        parts = [layer]
        kinds = {_check_recurrent(layer, inside_bidirectional=False)}
        direction, prefixes = "forward", [""]
    kind = kinds.pop()
    sequences = bool(parts[0].return_sequences)
    ws, rs, bs, variables = [], [], [], {}
    activations: list[str] = []
    alphas: list[float] = []
    betas: list[float] = []
    for prefix, part in zip(prefixes, parts, strict=True):
        (w, r, bias), names = _direction_weights(part, kind)
        ws.append(w)
        rs.append(r)
        bs.append(bias)
        variables.update({prefix + key: name for key, name in names.items()})
        acts, alpha, beta = _recurrent_activations(b, part, kind)
        activations += acts
        alphas += alpha
        betas += beta
    hidden = rs[0].shape[-1]
    op = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}[kind]
    attrs: dict[str, Any] = {"hidden_size": hidden, "direction": direction, "activations": activations,
                             "layout": 0}
    if alphas:
        attrs["activation_alpha"] = alphas
        attrs["activation_beta"] = betas
    if op == "GRU":
        attrs["linear_before_reset"] = int(bool(parts[0].cell.reset_after))
    seq_major = b.add("Transpose", [x], base=f"{layer.name}/to_time_major", perm=[1, 0, 2])[0]
    inputs = [seq_major, b.const(f"{layer.name}/W", np.stack(ws)), b.const(f"{layer.name}/R", np.stack(rs)),
              b.const(f"{layer.name}/B", np.stack(bs))]
    outs = b.add(op, inputs, base=f"{layer.name}/{op}", outputs=3 if op == "LSTM" else 2, **attrs)
    order, gate_map = {"LSTM": (KERAS_LSTM_ORDER, LSTM_GATE_MAP), "GRU": (KERAS_GRU_ORDER, GRU_GATE_MAP),
                       "SimpleRNN": (SIMPLE_RNN_ORDER, SIMPLE_RNN_GATE_MAP)}[kind]
    notes = f"Keras {type(layer).__name__} rebuilt from its weights"
    if kind == "GRU":
        notes += f" (reset_after={bool(parts[0].cell.reset_after)})"
    b.recurrent.append(RecurrentRecord(b.nodes[-1].name, layer.name, variables, order, dict(gate_map), notes))
    if sequences:  # Y [T, D, N, H] -> [N, T, D*H]; Keras concatenates forward then backward features
        y = b.add("Transpose", [outs[0]], base=f"{layer.name}/to_batch_major", perm=[2, 0, 1, 3])[0]
        shape = b.const(f"{layer.name}/seq_shape", np.array([0, 0, -1], np.int64))
    else:  # Y_h [D, N, H] -> [N, D*H]
        y = b.add("Transpose", [outs[1]], base=f"{layer.name}/to_batch_major", perm=[1, 0, 2])[0]
        shape = b.const(f"{layer.name}/last_shape", np.array([0, -1], np.int64))
    return b.add("Reshape", [y, shape], base=f"{layer.name}/merge_directions")[0]


def emit(b: GraphBuilder, layer: Any, x: str) -> str:
    if type(layer).__name__ in RECURRENT_LAYERS:
        return emit_recurrent(b, layer, x)
    return emit_simple(b, layer, x)
