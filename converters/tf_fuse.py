"""Take recurrent loops out of a TF graph before tf2onnx, and put fused ONNX nodes in their place after.

tf2onnx's rewriters fuse some TF1 cell loops and leave others as Loop/Scan (peepholes, GRU and mixed
stacks, BasicRNNCell, control flow v2, sequence lengths...).  So every loop tf_recurrence can read is
cut out first: each tensor it produces (the stacked outputs, final states) becomes a placeholder and
each tensor it reads (time-major input, lengths, initial states) an extra output; tf2onnx converts the
rest, every other op, as usual.  Then one fused LSTM/GRU/RNN per cell, built from the cell's weights,
computes those placeholders from those outputs, and the temporary inputs and outputs go away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters import tf_bidirectional
from converters.annotations import DEFAULT_ACTIVATIONS, annotate_recurrent_node
from converters.tf_cell_ops import layer_of
from converters.tf_loops import data_inputs, find_loops, node_of, tensor
from converters.tf_recurrence import Recurrence, read
from converters.weights import NotConstantError, resolve


@dataclass
class Cut:
    """A graph with its loops cut out, and what to splice back after tf2onnx."""

    graph_def: Any
    recurrences: list[Recurrence] = field(default_factory=list)
    replaced: dict[str, str] = field(default_factory=dict)  # outer loop tensor -> placeholder tensor
    boundary: list[str] = field(default_factory=list)  # tensors tf2onnx must output for the fused nodes
    placeholders: list[str] = field(default_factory=list)

    length_inputs: set[str] = field(default_factory=set)  # placeholders feeding sequence_length


def _placeholder(graph_def: Any, name: str, width: int, rank: int) -> str:
    import tensorflow as tf

    node = graph_def.node.add()
    node.name = name
    node.op = "Placeholder"
    node.attr["dtype"].type = tf.float32.as_datatype_enum
    node.attr["shape"].shape.CopyFrom(tf.TensorShape([None] * (rank - 1) + [width]).as_proto())
    return f"{name}:0"


def cut(graph_def: Any, outputs: list[str]) -> Cut:
    """Cut every readable recurrent loop out of ``graph_def`` (outputs: the model's output tensors)."""
    import tensorflow as tf

    recurrences = [found for loop in find_loops(graph_def) if (found := read(loop)) is not None]
    if not recurrences:
        return Cut(graph_def)
    result = Cut(tf.compat.v1.GraphDef())
    result.graph_def.CopyFrom(graph_def)
    for n, rec in enumerate(recurrences):
        scope = re.sub(r"[^A-Za-z0-9_./-]", "_", rec.loop.name)
        if rec.output is not None:
            result.replaced[rec.output] = _placeholder(result.graph_def, f"{scope}/fused_outputs_{n}",
                                                       rec.cells[-1].hidden, 3)
        for k, state in enumerate(rec.states):
            if state.final is not None:
                width = rec.cells[state.cell].hidden
                result.replaced[state.final] = _placeholder(result.graph_def, f"{scope}/fused_state_{n}_{k}", width, 2)
        result.boundary += [rec.x] + ([rec.lengths] if rec.lengths else []) + [s.init for s in rec.states]
    for node in result.graph_def.node:
        renamed = [result.replaced.get(tensor(name), name) if not name.startswith("^") else name for name in node.input]
        del node.input[:]
        node.input.extend(renamed)
    result.placeholders = list(result.replaced.values())
    # A loop may read what another loop produces (stacked dynamic_rnn calls): read the placeholder then.
    for rec in recurrences:
        rec.x = result.replaced.get(rec.x, rec.x)
        for state in rec.states:
            state.init = result.replaced.get(state.init, state.init)
    result.boundary = list(dict.fromkeys(result.replaced.get(name, name) for name in result.boundary))
    keep = [node_of(name) for name in outputs + result.boundary]
    result.graph_def = tf.compat.v1.graph_util.extract_sub_graph(result.graph_def, keep)
    present = {f"{node.name}:0" for node in result.graph_def.node}
    result.placeholders = [name for name in result.placeholders if name in present]  # unused finals are gone
    result.recurrences = recurrences
    nodes = {node.name: node for node in graph_def.node}
    for rec in recurrences:
        source = nodes.get(node_of(rec.lengths or ""))
        while source is not None and source.op in ("Identity", "Cast", "Snapshot"):
            source = nodes.get(node_of(data_inputs(source)[0]))
        if source is not None and source.op == "Placeholder":
            result.length_inputs.add(source.name)
    return result


def _topological(graph: onnx.GraphProto) -> None:
    known = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in known for name in node.input)]
        if not ready:
            raise ValueError("the spliced graph has a cycle or a dangling input")
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [node for node in pending if all(node is not other for other in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.taken = {o for n in self.graph.node for o in n.output} | {v.name for v in self.graph.input} \
            | {i.name for i in self.graph.initializer}

    def name(self, base: str) -> str:
        candidate, k = base, 0
        while candidate in self.taken:
            k += 1
            candidate = f"{base}_{k}"
        self.taken.add(candidate)
        return candidate

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> onnx.NodeProto:
        self.graph.node.append(helper.make_node(op, inputs, outputs, name=self.name(name), **attrs))
        return self.graph.node[-1]


def splice(model: onnx.ModelProto, found: Cut) -> list[tuple[str, Any]]:
    """Add the fused nodes for every cut loop; returns (node name, cell) pairs for the annotations."""
    build, made = _Builder(model), []
    for rec in found.recurrences:
        lengths = ""
        if rec.lengths:
            lengths = build.name(f"{rec.lengths}/int32")
            build.node("Cast", [rec.lengths], [lengths], f"{rec.loop.name}/lengths", to=onnx.TensorProto.INT32)
        current, empty = rec.x, ""
        for k, cell in enumerate(rec.cells):
            base = cell.layer
            weights = {key: build.constant(f"{base}/{key}", value[None].astype(np.float32))
                       for key, value in cell.weights.items()}
            initial = {}
            states = {s.role: s for s in rec.states if s.cell == k}
            for role, state in states.items():
                if _zero(model, state.init):
                    continue  # dynamic_rnn's zero_state: ONNX's default initial state is zeros too
                initial[role] = build.name(f"{state.init}/initial")
                axes = build.constant(f"{base}/axes0", np.array([0], np.int64))
                build.node("Unsqueeze", [state.init, axes], [initial[role]], f"{base}/initial_{role}")
            outputs = [build.name(f"{base}/{cell.op}_{part}") for part in ("Y", "Y_h", "Y_c")[:3 if cell.op == "LSTM" else 2]]
            inputs = [current, weights["W"], weights["R"], weights["B"], lengths, initial.get("h", "")]
            if cell.op == "LSTM":
                inputs += [initial.get("c", ""), weights.get("P", "")]
            attrs: dict[str, Any] = {"linear_before_reset": 0} if cell.op == "GRU" else {}
            if cell.activations != list(DEFAULT_ACTIVATIONS[cell.op]):
                attrs["activations"] = cell.activations
            while not inputs[-1]:
                inputs.pop()
            node = build.node(cell.op, inputs, outputs, f"{base}/{cell.op}", hidden_size=cell.hidden,
                              direction="forward", **attrs)
            made.append((node.name, cell))
            last = k == len(rec.cells) - 1
            current = found.replaced[rec.output] if last and rec.output in found.replaced else build.name(f"{base}/sequence")
            axes = build.constant(f"{base}/axes1", np.array([1], np.int64))
            build.node("Squeeze", [outputs[0], axes], [current], f"{base}/squeeze_directions")
            for role, state in states.items():
                if state.final in found.replaced:
                    target = found.replaced[state.final]
                    kept = bool(lengths) and not _zero(model, state.init)
                    squeezed = build.name(f"{base}/final_{role}_computed") if kept else target
                    axes = build.constant(f"{base}/axes0", np.array([0], np.int64))
                    build.node("Squeeze", [outputs[1 if role == "h" else 2], axes], [squeezed], f"{base}/final_{role}")
                    if kept:  # a row of length 0 keeps its initial state in TF; ONNX's Y_h is 0 there
                        empty = empty or _empty_rows(build, lengths, base)
                        build.node("Where", [empty, state.init, squeezed], [target], f"{base}/final_{role}_kept")
    placeholders = set(found.placeholders)
    inputs = [value for value in model.graph.input if value.name not in placeholders]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return made


def _zero(model: onnx.ModelProto, name: str) -> bool:
    """A constant zero tensor, or zeros expanded to a shape (dynamic_rnn's zero_state)."""
    producer = next((node for node in model.graph.node if name in node.output), None)
    try:
        if producer is not None and producer.op_type in ("Expand", "Tile", "Identity"):
            return _zero(model, producer.input[0])
        if producer is not None and producer.op_type == "ConstantOfShape":
            value = next((a.t for a in producer.attribute if a.name == "value"), None)
            return value is None or not np.any(numpy_helper.to_array(value))
        return not np.any(resolve(model, name))
    except NotConstantError:
        return False


def _empty_rows(build: _Builder, lengths: str, base: str) -> str:
    """[B, 1] booleans: which sequences have length 0."""
    zero = build.constant(f"{base}/zero_length", np.array(0, np.int32))
    axes = build.constant(f"{base}/axes1", np.array([1], np.int64))
    equal, empty = build.name(f"{base}/length_is_0"), build.name(f"{base}/empty_rows")
    build.node("Equal", [lengths, zero], [equal], f"{base}/length_is_0")
    build.node("Unsqueeze", [equal, axes], [empty], f"{base}/empty_rows")
    return empty


def drop_boundary(model: onnx.ModelProto, found: Cut, outputs: list[str]) -> None:
    """Remove the extra outputs the cut asked tf2onnx for, and what only they needed."""
    wanted = set(outputs)
    kept = [value for value in model.graph.output if value.name in wanted or value.name not in found.boundary]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    tidy(model.graph)


def tidy(graph: onnx.GraphProto) -> None:
    """Drop what nothing reads any more (loop remnants, zero-state builders, the Identity nodes tf2onnx put
    on the extra outputs), then order the nodes."""
    outputs = {value.name for value in graph.output}
    bodies = any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                 for node in graph.node for attr in node.attribute)  # their outer-scope reads go by name
    renames = {node.output[0]: node.input[0] for node in graph.node
               if node.op_type == "Identity" and node.output[0] not in outputs and not bodies}
    for node in graph.node:
        node.input[:] = [_final(renames, name) for name in node.input]
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(name in used for name in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    _topological(graph)


def _final(renames: dict[str, str], name: str) -> str:
    while name in renames:
        name = renames[name]
    return name


def fold_bidirectional(model: onnx.ModelProto, made: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """One bidirectional node for each forward/backward pair of single cells (tf_bidirectional)."""
    cells = dict(made)
    merged: list[tuple[str, Any]] = []
    while pairs := tf_bidirectional.find_pairs(model, list(cells)):
        forward, backward = cells.pop(pairs[0].forward.name), cells.pop(pairs[0].backward.name)
        scope = layer_of(forward.layer, backward.layer)
        name = f"{scope}/{forward.layer.rsplit('/', 1)[-1]}+{backward.layer.rsplit('/', 1)[-1]}/{forward.op}"
        tf_bidirectional.merge(model, pairs[0], name)
        merged.append((name, (forward, backward)))
    if merged:
        tidy(model.graph)
    return list(cells.items()) + merged


def _merged(cells: tuple[Any, Any]) -> dict[str, Any]:
    """Annotation fields of a bidirectional node: variables per direction, as tf_graph does for tf2onnx's."""
    forward, backward = cells
    folded = dict(forward.folded) if forward.folded == backward.folded else {
        f"{d}.{key}": value for d, cell in zip(("forward", "reverse"), cells, strict=True)
        for key, value in cell.folded.items()}
    return {"layer": f"{forward.layer} + {backward.layer}",
            "variables": {f"{d}.{key}": value for d, cell in zip(("forward", "reverse"), cells, strict=True)
                          for key, value in cell.variables.items()},
            "source_gate_order": forward.gate_order, "gate_map": forward.gate_map, "folded": folded,
            "notes": f"{forward.notes}; bidirectional_dynamic_rnn: forward = {forward.layer}, "
                     f"reverse = {backward.layer} (TF's reverse_sequence of input and outputs is ONNX's reverse)"}


def annotate(model: onnx.ModelProto, made: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    nodes = {node.name: node for node in model.graph.node}  # the graph's own messages, not copies
    for name, cell in made:
        fields = _merged(cell) if isinstance(cell, tuple) else {
            "layer": cell.layer, "variables": cell.variables, "source_gate_order": cell.gate_order,
            "gate_map": cell.gate_map, "folded": cell.folded, "notes": cell.notes}
        entries.append(annotate_recurrent_node(model, nodes[name], framework="tensorflow", **fields))
    return entries
