"""Passes over the ONNX graph tf2onnx exported from a Keras trace (numpy + onnx only).

``replace_placeholders`` puts each recurrent layer's fused subgraph (keras_fuse.py) where the trace left
its placeholder; ``name_outputs`` gives the graph outputs the Keras names and the traced shapes
(tf2onnx cannot see shapes through the placeholders); ``loops_left`` looks for Loop/Scan anywhere,
subgraphs included.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from converters.keras_fuse import RecurrentSite, fuse
from converters.keras_layers import GraphBuilder, UnsupportedLayerError
from converters.keras_markers import MARKER_DOMAIN


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _graphs(sub)


def loops_left(model: onnx.ModelProto) -> list[str]:
    return sorted({node.op_type for graph in _graphs(model.graph) for node in graph.node} & {"Loop", "Scan"})


def name_outputs(model: onnx.ModelProto, names: list[str], shapes: list[list[int | None]]) -> None:
    """Keras output names (when they are free) and the traced output shapes on the graph outputs."""
    _rename_outputs(model, names)
    _declare_output_shapes(model, shapes)


def _rename_outputs(model: onnx.ModelProto, names: list[str]) -> None:
    graph = model.graph
    if len(names) != len(graph.output):
        return
    taken = {name for g in _graphs(graph) for node in g.node for name in [*node.input, *node.output]}
    renames: dict[str, str] = {}
    for value_info, name in zip(graph.output, names, strict=True):
        if value_info.name != name and name not in taken and name not in renames.values():
            renames[value_info.name] = name
            value_info.name = name
    for g in _graphs(graph):
        for node in g.node:
            node.input[:] = [renames.get(name, name) for name in node.input]
            node.output[:] = [renames.get(name, name) for name in node.output]


def _declare_output_shapes(model: onnx.ModelProto, shapes: list[list[int | None]]) -> None:
    """Graph outputs fed by a placeholder have no shape from tf2onnx: take the traced function's."""
    outputs = model.graph.output
    if len(outputs) != len(shapes) or not all(shapes):
        return
    for value_info, shape in zip(outputs, shapes, strict=True):
        tensor_type = value_info.type.tensor_type
        if tensor_type.HasField("shape") and len(tensor_type.shape.dim) == len(shape):
            continue
        tensor_type.ClearField("shape")
        for k, dim in enumerate(shape):
            entry = tensor_type.shape.dim.add()
            if dim is None:
                entry.dim_param = "batch" if k == 0 else f"{value_info.name}_dim{k}"
            else:
                entry.dim_value = dim


def replace_placeholders(model: onnx.ModelProto, sites: list[RecurrentSite]) -> None:
    graph = model.graph
    taken = {name for node in graph.node for name in [node.name, *node.input, *node.output]}
    builder = GraphBuilder(taken=taken | {init.name for init in graph.initializer})
    nodes = []
    fused = set()
    for node in graph.node:
        if node.domain != MARKER_DOMAIN:
            nodes.append(node)
            continue
        index = next(attr.i for attr in node.attribute if attr.name == "site")
        start = len(builder.nodes)
        fuse(builder, sites[index], list(node.input), list(node.output))
        nodes.extend(builder.nodes[start:])
        fused.add(index)
    missing = [site.layer for site in sites if site.index not in fused]
    if missing:
        raise UnsupportedLayerError(f"recurrent layer(s) {', '.join(missing)} did not reach the exported graph")
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(builder.initializers)
    kept = [opset for opset in model.opset_import if opset.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    # tf2onnx could not infer shapes through the placeholders; stale partial entries would only mislead.
    del graph.value_info[:]
