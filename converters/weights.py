"""Resolve a tensor of an ONNX graph to its constant value (numpy + onnx only; the server imports it).

Fused recurrent weights are not always initializers: the torch dynamo exporter feeds LSTM/GRU from
Slice/Concat/Reshape chains over the PyTorch parameters.  Such a tensor is constant when everything
upstream of it is an initializer or a Constant node; we cut that subgraph out and evaluate it with
onnx's reference evaluator.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class NotConstantError(ValueError):
    """The tensor depends on a graph input, so it has no single value."""


def resolve(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The constant value of tensor ``name`` in ``model.graph``."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    producers = {out: node for node in graph.node for out in node.output if out}
    graph_inputs = {value.name for value in graph.input} - set(initializers)

    needed_nodes: set[int] = set()
    needed_inits: set[str] = set()
    stack = [name]
    seen: set[str] = set()
    node_index = {id(node): index for index, node in enumerate(graph.node)}
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        if tensor in initializers:
            needed_inits.add(tensor)
        elif tensor in graph_inputs:
            raise NotConstantError(f"tensor {name!r} depends on graph input {tensor!r}")
        elif tensor in producers:
            node = producers[tensor]
            needed_nodes.add(node_index[id(node)])
            stack.extend(node.input)
        else:
            raise NotConstantError(f"tensor {name!r} depends on {tensor!r}, which nothing in the graph produces")

    nodes = [graph.node[index] for index in sorted(needed_nodes)]
    subgraph = onnx.helper.make_graph(
        nodes,
        "resolve",
        inputs=[],
        outputs=[onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
        initializer=[initializers[init] for init in sorted(needed_inits)],
    )
    submodel = onnx.helper.make_model(
        subgraph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    submodel.functions.extend(model.functions)
    from onnx.reference import ReferenceEvaluator

    (value,) = ReferenceEvaluator(submodel).run(None, {})
    return np.asarray(value)


def resolve_optional(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """Like resolve, but an empty (omitted optional) input name gives None."""
    return resolve(model, name) if name else None
