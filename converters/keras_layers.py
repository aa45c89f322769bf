"""What the Keras converter reads off a recurrent layer: activations, weights, variable names; and the
small ONNX graph builder the fused subgraphs are written with.

The readers use the API Keras 3 and tf-keras 2.x share (class name, ``get_config``, variables,
``cell``), so this module imports neither; keras.py does.  Something ONNX cannot express raises
UnsupportedLayerError naming the layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters import UnsupportedSourceError


class UnsupportedLayerError(UnsupportedSourceError):
    """A layer (named in the message) this converter cannot express faithfully in ONNX."""


@dataclass
class GraphBuilder:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    # tf-keras activations need a tf.Tensor, Keras 3 ones take numpy: keras.py supplies the wrapper.
    to_tensor: Callable[[np.ndarray], Any] = lambda array: array
    taken: set[str] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_./]", "_", base)
        name, index = base, 0
        while name in self.taken:
            index += 1
            name = f"{base}_{index}"
        self.taken.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(self, op: str, inputs: list[str], *, base: str, outputs: int = 1, names: Sequence[str] = (),
            **attrs: Any) -> list[str]:
        """Append a node; its outputs are ``names`` when given, else fresh names after ``base``."""
        name = self.fresh(base)
        if not names:
            names = [f"{name}:{k}" if outputs > 1 else name for k in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, list(names), name=name, **attrs))
        return list(names)


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


def hard_sigmoid_params(to_tensor: Callable[[np.ndarray], Any], function: Callable[[Any], Any],
                        where: str) -> tuple[float, float]:
    """Keras 3 hard_sigmoid is relu6(x+3)/6 (alpha 1/6), tf-keras uses 0.2: measure, don't assume."""
    points = to_tensor(np.array([-1.0, 0.0, 1.0, -50.0, 50.0], np.float32))
    probe = np.asarray(function(points), dtype=np.float64)
    if abs(probe[3]) > 1e-6 or abs(probe[4] - 1.0) > 1e-6:
        raise UnsupportedLayerError(f"layer {where!r}: hard_sigmoid variant saturating at {probe[3]:g}/{probe[4]:g}, "
                                    "not 0/1, has no ONNX HardSigmoid equivalent")
    alpha, beta = float((probe[2] - probe[0]) / 2.0), float(probe[1])
    # The float32 probe is off in the 8th digit; snap to the known variants so the attribute reads clean.
    for known in (0.2, 1.0 / 6.0):
        if abs(alpha - known) < 1e-6:
            alpha = known
    return alpha, beta


# Keras activation -> ONNX recurrent activation that computes the same function with default parameters.
PLAIN_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
                     "softsign": "Softsign"}
ONNX_RECURRENT_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
                              "HardSigmoid", "Elu", "Softsign", "Softplus")


def recurrent_activations(layer: Any, kind: str, to_tensor: Callable[[np.ndarray], Any],
                          where: str) -> tuple[list[str], list[float], list[float]]:
    """ONNX ``activations`` (and alpha/beta where needed) of one direction of a Keras LSTM/GRU/SimpleRNN cell."""
    keys = {"LSTM": ("recurrent_activation", "activation", "activation"),
            "GRU": ("recurrent_activation", "activation"), "RNN": ("activation",)}[kind]
    names, alphas, betas = [], [], []
    for key in keys:
        name = activation_name(layer, key)
        if name in PLAIN_ACTIVATIONS:
            names.append(PLAIN_ACTIVATIONS[name])
        elif name == "hard_sigmoid":
            alpha, beta = hard_sigmoid_params(to_tensor, getattr(layer, key), where)
            names.append("HardSigmoid")
            alphas.append(alpha)
            betas.append(beta)
        elif name == "linear":
            names.append("Affine")
            alphas.append(1.0)
            betas.append(0.0)
        elif name == "elu":  # Keras elu has alpha 1, ONNX Elu's default
            names.append("Elu")
            alphas.append(1.0)  # onnxruntime takes alphas and betas only for the activations that use them
        else:
            raise UnsupportedLayerError(
                f"layer {where!r}: {key} {name!r} has no ONNX {kind} equivalent (ONNX recurrent ops support only "
                f"{', '.join(ONNX_RECURRENT_ACTIVATIONS)}; Keras relu, sigmoid, tanh, hard_sigmoid, linear, "
                "softplus, softsign and elu map onto them)")
    return names, alphas, betas
