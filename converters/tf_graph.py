"""After tf2onnx: tidy tensor names, annotate fused recurrent nodes, refuse left-over loops (no TF import)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from converters.annotations import GATE_ORDERS, annotate_recurrent_node, node_annotation
from converters.keras_layers import UnsupportedLayerError
from converters.specs import InputSpec
from converters.tf_cells import CellMatch, match_direction
from converters.weights import resolve

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@dataclass
class Loaded:
    """A TensorFlow source ready for tf2onnx: a frozen graph or a function, plus what parity needs."""

    origin: str
    specs: list[InputSpec]
    input_names: list[str]  # TF tensor names ("x:0")
    output_names: list[str]
    graph_def: Any = None
    function: Any = None  # a tf.function with an input_signature
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    op_names: list[str] = field(default_factory=list)
    matched: set[str] = field(default_factory=set)
    keepalive: Any = None  # the loaded SavedModel object its functions belong to
    declared: set[str] = field(default_factory=set)  # input names whose shape the user gave
    loop_scopes: list[str] = field(default_factory=list)  # TF while-loop scopes ("sequential/gru"), for errors


def rename_io(model: onnx.ModelProto) -> None:
    """``x:0`` -> ``x`` on graph inputs and outputs, so clients use the names people wrote."""
    graph = model.graph
    taken = {name for node in graph.node for name in node.output} | {value.name for value in graph.input}
    renames = {}
    for value in list(graph.input) + list(graph.output):
        plain = re.sub(r":0$", "", value.name)
        if plain != value.name and plain not in taken:
            renames[value.name] = plain
            taken.add(plain)
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        # tf2onnx calls an unknown leading dimension "unk__N"; it is the batch for every TF model we take.
        if dims and dims[0].dim_param.startswith("unk__"):
            dims[0].dim_param = "batch"
    if not renames:
        return
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]


def _merge(matches: list[CellMatch], directions: list[str]) -> CellMatch:
    if len(matches) == 1:
        return matches[0]
    variables = {f"{d}.{key}": name for d, m in zip(directions, matches, strict=True) for key, name in m.variables.items()}
    folded: dict[str, float] = {}
    for d, m in zip(directions, matches, strict=True):
        folded.update({f"{d}.{key}": v for key, v in m.folded.items()})
    if len({tuple(sorted(m.folded.items())) for m in matches}) == 1:
        folded = dict(matches[0].folded)
    layers = " + ".join(dict.fromkeys(m.layer for m in matches))
    return CellMatch(layers, variables, matches[0].source_gate_order, matches[0].gate_map, folded,
                     "; ".join(dict.fromkeys(m.notes for m in matches)))


def annotate_fused(model: onnx.ModelProto, loaded: Loaded) -> list[dict[str, Any]]:
    """Annotate every LSTM/GRU/RNN node with the source variables it was built from."""
    entries = []
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        if (done := node_annotation(node)) is not None:  # fused from its cell's weights (tf_fuse)
            entries.append(done)
            continue
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        if layout != 0:
            raise UnsupportedLayerError(f"node {node.name!r}: layout={layout}; onnxruntime-web needs layout 0")
        inputs = list(node.input) + [""] * 8
        w, r = resolve(model, inputs[1]), resolve(model, inputs[2])
        b = resolve(model, inputs[3]) if inputs[3] else None
        directions = ["forward", "reverse"] if w.shape[0] == 2 else ["forward"]
        matches = []
        for d in range(w.shape[0]):
            found = match_direction(node.op_type, w[d], r[d], None if b is None else b[d], loaded.variables)
            if found is None:
                break
            matches.append(found)
        if len(matches) == len(directions):
            for found in matches:
                if inputs[7]:  # peepholes: name the TF1 diagonal variables too
                    found.variables.update({f"w_{g}_diag": f"{found.layer}/w_{g}_diag" for g in ("i", "f", "o")
                                            if f"{found.layer}/w_{g}_diag" in loaded.variables})
            match = _merge(matches, directions)
            loaded.matched.update(match.variables.values())
        else:
            gates = GATE_ORDERS[node.op_type]
            match = CellMatch(node.name, {}, gates, {g: g for g in gates}, {},
                              "source variables not identified by value; gate order is ONNX's own")
        taken = {other.name for other in model.graph.node}
        if match.variables and f"{match.layer}/{node.op_type}" not in taken:
            node.name = f"{match.layer}/{node.op_type}"  # "rnn/basic_lstm_cell/LSTM" beats "rnn/_LSTM__28"
        entries.append(annotate_recurrent_node(
            model, node, framework="tensorflow", layer=match.layer, variables=match.variables,
            source_gate_order=match.source_gate_order, gate_map=match.gate_map, folded=match.folded,
            notes=match.notes))
    return entries


def holds_matmul(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            return True
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH and holds_matmul(attr.g):
                return True
    return False


def _features(layer: str, loaded: Loaded) -> list[str]:
    names = [name for name in loaded.variables if name.startswith(layer + "/")]
    found = []
    if any(name.endswith(("w_f_diag", "w_i_diag", "w_o_diag")) for name in names):
        found.append("use_peepholes")
    if any("/projection/" in name for name in names):
        found.append("num_proj: the projected output feeds the recurrence, which ONNX LSTM cannot express")
    base = layer.rsplit("/", 1)[-1]
    if any(f"/{base}/clip_by_value" in op for op in loaded.op_names):
        found.append("cell_clip: TF clips the cell state, ONNX LSTM's clip bounds the gate pre-activations")
    return found


def unmatched_cells(loaded: Loaded) -> list[str]:
    """TF1/Keras cell scopes (``.../*_cell``) whose kernels no fused node was matched to."""
    cells = set()
    for name, value in loaded.variables.items():
        if not name.endswith("/kernel") or value.ndim != 2 or name in loaded.matched or "/projection/" in name:
            continue
        layer = re.sub(r"/(gates|candidate)$", "", name.rsplit("/", 1)[0])
        if layer.rsplit("/", 1)[-1].endswith("_cell"):
            cells.add(layer)
    return sorted(cells)


def recurrent_loops(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type in ("Loop", "Scan")
            and any(attr.type == onnx.AttributeProto.GRAPH and holds_matmul(attr.g) for attr in node.attribute)]


def refuse_loops(model: onnx.ModelProto, loaded: Loaded, *, obstacle: str | None = None) -> None:
    """Refuse, naming the cell, when a recurrent cell did not become a fused node (a loop or unrolled)."""
    loops = recurrent_loops(model)
    cells = unmatched_cells(loaded)
    described = [f"{layer!r}" + (f" ({', '.join(feats)})" if (feats := _features(layer, loaded)) else "")
                 for layer in cells]
    scopes = ", ".join(repr(scope) for scope in loaded.loop_scopes)
    who = "; ".join(described) if described else (f"in loop {scopes}" if scopes else "(unidentified)")
    if loops:
        where = ", ".join(f"{node.op_type} {node.name!r}" for node in loops)
        raise UnsupportedLayerError(
            f"TensorFlow recurrent layer {who} did not fuse into an ONNX LSTM/GRU/RNN (tf2onnx left {where}"
            + (f"; {obstacle}" if obstacle else "") + "). Fused: BasicLSTMCell, LSTMCell (peepholes, any "
            "forget_bias; no cell_clip/num_proj), GRUCell, BasicRNNCell, MultiRNNCell stacks of those, under "
            "dynamic_rnn or bidirectional_dynamic_rnn (control flow v1 or v2) at the top level of the graph (not "
            "inside another loop), with no wrapper cell around them; Keras layers: convert Keras models (or the SavedModel a TF2 graph was frozen from) "
            "with the keras converter, which rebuilds every recurrent layer."
        )
    if cells:
        raise UnsupportedLayerError(
            f"TensorFlow recurrent layer {who} is computed step by step in the graph (static_rnn, or Keras "
            "unroll=True), which would convert to an unrolled model with no fused LSTM/GRU/RNN. Build it with "
            "dynamic_rnn (TF1) or unroll=False (Keras), or convert the Keras model with the keras converter."
        )
