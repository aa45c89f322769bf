"""Fold a bidirectional_dynamic_rnn pair of fused nodes into one ``direction="bidirectional"`` node (onnx only).

TF runs the backward cell forward over ``reverse_sequence(x, lengths)`` and reverses its outputs back;
tf_fuse gives each cell its own forward node, so the pair shows in the ONNX graph as a forward node on
``x`` and a forward node on ``ReverseSequence(x, lengths)`` whose outputs pass (maybe transposed) through
``ReverseSequence(.., lengths)`` again.  ONNX's reverse direction with ``sequence_lens`` is exactly that,
so when both ends match (same source, same lengths, time axes consistent) the pair becomes one node
and both reversals go away.  Anything else (stacked bidirectional cells, whose backward layers feed
each other) stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.weights import resolve


@dataclass
class Pair:
    forward: onnx.NodeProto
    backward: onnx.NodeProto
    restored: str  # the backward outputs back in time order (what the second ReverseSequence made)
    batch_major: bool  # layout of ``restored``


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _swaps(node: onnx.NodeProto) -> bool:
    return node.op_type == "Transpose" and list(_attr(node, "perm", [])) == [1, 0, 2]


def _reverses(node: onnx.NodeProto, time_major: bool) -> bool:
    time, batch = _attr(node, "time_axis", 0), _attr(node, "batch_axis", 1)
    return node.op_type == "ReverseSequence" and (time, batch) == ((0, 1) if time_major else (1, 0))


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)
        self.outputs = {value.name for value in model.graph.output}

    def root(self, name: str) -> str:
        while name in self.producer and self.producer[name].op_type in ("Identity", "Cast"):
            name = self.producer[name].input[0]
        return name

    def back(self, name: str) -> tuple[str, bool, str | None]:
        """From a time-major node input back to its source: (source, source is time-major, reversal lengths)."""
        time_major, lengths = True, None
        while name in self.producer:
            node = self.producer[name]
            if node.op_type == "Identity":
                pass
            elif _swaps(node):
                time_major = not time_major
            elif _reverses(node, time_major) and lengths is None:
                lengths = node.input[1]
            else:
                break
            name = node.input[0]
        return name, time_major, lengths

    def only_user(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name`` for its values (Shape readers aside)."""
        users = [node for node in self.users.get(name, []) if node.op_type != "Shape"]
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def full_lengths(self, name: str) -> bool:
        """Lengths computed from shapes alone: tf2onnx's ReverseSequence for a whole-axis ReverseV2."""
        initializers = {init.name for init in self.model.graph.initializer}
        stack, shapes = [name], 0
        while stack:
            current = stack.pop()
            node = self.producer.get(current)
            if node is None:
                if current not in initializers:
                    return False
            elif node.op_type == "Shape":
                shapes += 1
            elif node.op_type in ("Expand", "Gather", "Cast", "Identity", "Unsqueeze", "Squeeze", "Concat", "Slice"):
                stack += [inp for inp in node.input if inp]
            else:
                return False
        return shapes > 0

    def same_lengths(self, found: str | None, lengths: str | None) -> bool:
        if found is None:
            return False
        return self.root(found) == lengths if lengths else self.full_lengths(found)

    def restored(self, sequence: str, lengths: str | None) -> tuple[str, bool] | None:
        """Follow the backward outputs (time-major) to the ReverseSequence that restores time order."""
        time_major = True
        while (node := self.only_user(sequence)) is not None:
            if _reverses(node, time_major) and self.same_lengths(node.input[1], lengths):
                return node.output[0], not time_major
            if node.op_type == "Identity" or _swaps(node):
                time_major = time_major if node.op_type == "Identity" else not time_major
                sequence = node.output[0]
                continue
            return None
        return None


def _squeezed(graph: _Graph, name: str) -> onnx.NodeProto | None:
    node = graph.only_user(name)
    return node if node is not None and node.op_type == "Squeeze" else None


def find_pairs(model: onnx.ModelProto, names: list[str]) -> list[Pair]:
    graph = _Graph(model)
    nodes = {node.name: node for node in model.graph.node if node.name in names}
    pairs: list[Pair] = []
    used: set[str] = set()
    for forward in nodes.values():
        for backward in nodes.values():
            if forward is backward or {forward.name, backward.name} & used or forward.op_type != backward.op_type:
                continue
            f_in, b_in = list(forward.input) + [""] * 8, list(backward.input) + [""] * 8
            if bool(f_in[4]) != bool(b_in[4]) or graph.root(f_in[4]) != graph.root(b_in[4]) \
                    or bool(f_in[7]) != bool(b_in[7]) \
                    or [bool(f_in[k]) for k in (5, 6)] != [bool(b_in[k]) for k in (5, 6)] \
                    or _attr(forward, "hidden_size", 0) != _attr(backward, "hidden_size", 1):
                continue
            lengths = graph.root(f_in[4]) if f_in[4] else None
            f_src, b_src = graph.back(forward.input[0]), graph.back(backward.input[0])
            if f_src[2] is not None or not graph.same_lengths(b_src[2], lengths) or f_src[:2] != b_src[:2]:
                continue
            sequence = _squeezed(graph, backward.output[0])
            found = sequence and graph.restored(sequence.output[0], lengths)
            if found and _squeezed(graph, forward.output[0]) is not None:
                pairs.append(Pair(forward, backward, *found))
                used |= {forward.name, backward.name}
    return pairs


def merge(model: onnx.ModelProto, pair: Pair, name: str) -> None:
    """Replace the pair by one bidirectional node named ``name``, its outputs taken apart by Gather."""
    graph = _Graph(model)
    f_in, b_in = list(pair.forward.input) + [""] * 8, list(pair.backward.input) + [""] * 8
    slots = [""] * 8
    slots[0], slots[4] = f_in[0], f_in[4]
    new: list[onnx.NodeProto] = []
    for k, key in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
        if f_in[k]:
            value = np.concatenate([resolve(model, f_in[k]), resolve(model, b_in[k])])
            model.graph.initializer.append(numpy_helper.from_array(value, f"{name}/{key}"))
            slots[k] = f"{name}/{key}"
    for k, part in ((5, "initial_h"), (6, "initial_c")):
        if f_in[k]:
            new.append(helper.make_node("Concat", [f_in[k], b_in[k]], [f"{name}/{part}"], name=f"{name}/{part}", axis=0))
            slots[k] = f"{name}/{part}"
    while not slots[-1]:
        slots.pop()
    outputs = [f"{name}/{part}" for part in ("Y", "Y_h", "Y_c")[:len(pair.forward.output)]]
    attrs = {a.name: helper.get_attribute_value(a) for a in pair.forward.attribute}
    attrs["direction"] = "bidirectional"
    new.append(helper.make_node(pair.forward.op_type, slots, outputs, name=name, **attrs))
    for which in (0, 1):
        model.graph.initializer.append(numpy_helper.from_array(np.array(which, np.int64), f"{name}/index{which}"))

    def take(source: str, which: int, axis: int, target: str) -> onnx.NodeProto:
        return helper.make_node("Gather", [source, f"{name}/index{which}"], [target], name=f"{target}/gather", axis=axis)

    drop = {pair.forward.name, pair.backward.name, graph.producer[pair.restored].name}
    if pair.batch_major:
        new += [take(outputs[0], 1, 1, f"{name}/reverse_sequence"),
                helper.make_node("Transpose", [f"{name}/reverse_sequence"], [pair.restored],
                                 name=f"{name}/batch_major", perm=[1, 0, 2])]
    else:
        new.append(take(outputs[0], 1, 1, pair.restored))
    for which, node in enumerate((pair.forward, pair.backward)):
        for position, out in enumerate(node.output):
            squeeze = _squeezed(graph, out)
            if squeeze is None or (position == 0 and which == 1):
                continue  # the backward sequence is taken from Y above, in time order
            drop.add(squeeze.name)
            new.append(take(outputs[position], which, 1 if position == 0 else 0, squeeze.output[0]))
    kept = [node for node in model.graph.node if node.name not in drop]
    del model.graph.node[:]
    model.graph.node.extend(kept + new)
