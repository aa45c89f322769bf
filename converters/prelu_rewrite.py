"""Fold the elementwise form of PReLU that tf2onnx emits for Keras 3 back into one ONNX PRelu.

Keras 3 computes PReLU as relu(x) - alpha * relu(-x); through tf2onnx that becomes
Add(Relu(x), Mul(Relu(Neg(x)), -alpha)) (or Sub(Relu(x), Mul(alpha, Relu(Neg(x))))).  PRelu(x, alpha)
is the same function, one node, and what the layer is called everywhere else.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.weights import NotConstantError, resolve


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _negated_relu_source(producers: dict[str, onnx.NodeProto], name: str) -> str | None:
    relu = producers.get(name)
    if relu is None or relu.op_type != "Relu":
        return None
    neg = producers.get(relu.input[0])
    return neg.input[0] if neg is not None and neg.op_type == "Neg" else None


def _match(model: onnx.ModelProto, node: onnx.NodeProto,
           producers: dict[str, onnx.NodeProto]) -> tuple[str, np.ndarray, list[onnx.NodeProto]] | None:
    """(x, alpha, nodes to drop) when ``node`` is the final Add/Sub of an elementwise PReLU."""
    if node.op_type not in ("Add", "Sub") or len(node.input) != 2:
        return None
    orders = [(0, 1)] if node.op_type == "Sub" else [(0, 1), (1, 0)]
    for left, right in orders:
        relu, mul = producers.get(node.input[left]), producers.get(node.input[right])
        if relu is None or relu.op_type != "Relu" or mul is None or mul.op_type != "Mul":
            continue
        for k in (0, 1):
            x = _negated_relu_source(producers, mul.input[k])
            if x is None or x != relu.input[0]:
                continue
            try:
                scale = resolve(model, mul.input[1 - k])
            except NotConstantError:
                continue
            alpha = scale if node.op_type == "Sub" else -scale
            negated_relu = producers[mul.input[k]]
            return x, alpha.astype(np.float32), [relu, mul, negated_relu, producers[negated_relu.input[0]]]
    return None


def rewrite_prelu(model: onnx.ModelProto) -> int:
    """Rewrite every elementwise PReLU in ``model`` in place; returns how many were rewritten."""
    graph = model.graph
    count = 0
    for node in list(graph.node):
        producers = _producers(graph)
        matched = _match(model, node, producers)
        if matched is None:
            continue
        x, alpha, parts = matched
        slope = f"{node.name}/prelu_alpha"
        graph.initializer.append(numpy_helper.from_array(alpha, slope))
        position = list(graph.node).index(node)
        graph.node.insert(position, helper.make_node("PRelu", [x, slope], list(node.output), name=f"{node.name}/PRelu"))
        graph.node.remove(node)
        used = {name for other in graph.node for name in other.input} | {o.name for o in graph.output}
        for part in parts:  # drop the pieces nothing else reads
            if part in graph.node and not any(out in used for out in part.output):
                graph.node.remove(part)
                used = {name for other in graph.node for name in other.input} | {o.name for o in graph.output}
        count += 1
    return count
