"""One view of a TensorFlow while loop, whether control flow v1 (Enter/Merge/Switch/NextIteration/Exit
frames) or v2 (a While node calling a body function), so the cells inside are found one way (tf_cells_graph).

Tensors are ``node:index`` strings.  A v1 body lives in the graph itself; a v2 body is the While's body
FunctionDef turned into a GraphDef whose placeholders are the loop variables.  ``outer()`` says which
outer-graph tensor a body tensor stands for when it is loop-invariant (weights, sequence lengths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_ACCUMULATORS = {"TensorListPushBack", "StackPushV2", "StackPush"}


def tensor(name: str) -> str:
    """``node`` -> ``node:0``; ``node:2`` stays."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:0"


def node_of(name: str) -> str:
    return name.lstrip("^").split(":")[0] if ":" in name.rsplit("/", 1)[-1] else name.lstrip("^")


def data_inputs(node: Any) -> list[str]:
    return [tensor(name) for name in node.input if not name.startswith("^")]


@dataclass
class LoopVar:
    init: str  # outer tensor the loop starts from
    inside: str  # body tensor holding the value during an iteration
    next: str  # body tensor computing the next value
    final: str | None  # outer tensor of the value after the loop


@dataclass
class Loop:
    name: str  # the While node (v2) or the frame's scope (v1)
    version: int
    body: dict[str, Any]  # body nodes by name
    outer_graph: dict[str, Any]  # outer graph nodes by name
    variables: list[LoopVar]
    invariants: dict[str, str] = field(default_factory=dict)  # body tensor -> outer tensor
    consumers: dict[str, list[Any]] = field(default_factory=dict)  # body tensor -> consuming body nodes

    def node(self, name: str) -> Any:
        return self.body.get(node_of(name))

    def skip_identity(self, name: str) -> str:
        """Follow Identity nodes (and, in v1, the Switch that carries a loop variable) backwards."""
        while (node := self.node(name)) is not None and node.op in ("Identity", "Snapshot"):
            name = data_inputs(node)[0]
        return name

    def outer(self, name: str) -> str | None:
        """The outer tensor a loop-invariant body tensor comes from, None when it varies."""
        name = self.skip_identity(name)
        if name in self.invariants:
            return self.invariants[name]
        return None

    def constant(self, name: str) -> tuple[str, np.ndarray] | None:
        """(name of the Const, its value) when the body tensor is constant, else None."""
        import tensorflow as tf

        name = self.skip_identity(name)
        node = self.node(name)
        nodes = self.body
        if node is None or node.op != "Const":
            outside = self.outer(name)
            if outside is None:
                return None
            nodes, name = self.outer_graph, outside
            while (node := nodes.get(node_of(name))) is not None and node.op in ("Identity", "Snapshot"):
                name = data_inputs(node)[0]
            if node is None or node.op != "Const":
                return None
        return node.name, tf.make_ndarray(node.attr["value"].tensor)

    def users(self, name: str) -> list[Any]:
        """Body nodes consuming ``name``, looking through Identity nodes."""
        found = []
        for node in self.consumers.get(name, []):
            if node.op in ("Identity", "Snapshot"):
                found += self.users(f"{node.name}:0")
            else:
                found.append(node)
        return found

    def index(self) -> None:
        live = self._live() if self.version == 2 else None
        self.consumers = {}
        for node in self.body.values():
            if node.op in _ACCUMULATORS or (live is not None and node.name not in live):
                continue  # what gradients save for backprop (and the shapes they need) is not part of the cell
            for name in data_inputs(node):
                self.consumers.setdefault(name, []).append(node)

    def _live(self) -> set[str]:
        """Body nodes the loop's own values need, leaving out gradient accumulators and their feeders."""
        stack = [node_of(var.next) for var in self.variables
                 if (step := self.body.get(node_of(var.next))) is None or step.op not in _ACCUMULATORS]
        live: set[str] = set()
        while stack:
            name = stack.pop()
            if name in live or name not in self.body:
                continue
            live.add(name)
            stack += [node_of(inp) for inp in self.body[name].input]
        return live


def _in_frames(frames: dict[str, list[Any]], consumers: dict[str, list[Any]]) -> dict[str, set[str]]:
    """Per v1 frame, the nodes inside it: downstream of its Enter nodes until an Exit leaves it (inner
    frames' Enter/Exit pairs count in and out)."""
    inside = {}
    for frame, enters in frames.items():
        seen: set[str] = set()
        stack = [(enter.name, 0) for enter in enters]
        while stack:
            name, depth = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            for user in consumers.get(name, []):
                if user.op == "Exit" and depth == 0:
                    continue
                stack.append((user.name, depth + (user.op == "Enter") - (user.op == "Exit")))
        inside[frame] = seen
    return inside


def _v1_loops(graph: dict[str, Any]) -> list[Loop]:
    frames: dict[str, list[Any]] = {}
    for node in graph.values():
        if node.op == "Enter":
            frames.setdefault(node.attr["frame_name"].s.decode(), []).append(node)
    consumers: dict[str, list[Any]] = {}
    for node in graph.values():
        for name in node.input:  # control inputs too: a loop's constants hang off its pivot that way
            consumers.setdefault(node_of(name), []).append(node)
    loops = []
    nested = _in_frames(frames, consumers)
    for frame, enters in frames.items():
        if any(node_of(data_inputs(enter)[0]) in nested[other] for enter in enters for other in frames if other != frame):
            continue  # a loop inside another loop's body: cutting it would tear the outer frame apart
        body = {name: graph[name] for name in nested[frame]}
        loop = Loop(frame.removesuffix("/while_context"), 1, body, graph, [])
        for enter in enters:
            if enter.attr["is_constant"].b:
                loop.invariants[f"{enter.name}:0"] = data_inputs(enter)[0]
                continue
            merge = next((n for n in consumers.get(enter.name, []) if n.op == "Merge"), None)
            switch = merge and next((n for n in consumers.get(merge.name, []) if n.op == "Switch"), None)
            if merge is None or switch is None:
                continue
            after = graph.get(node_of(data_inputs(merge)[1]))
            exits = [n for n in consumers.get(switch.name, []) if n.op == "Exit"]
            loop.variables.append(LoopVar(data_inputs(enter)[0], f"{switch.name}:1",
                                          data_inputs(after)[0] if after is not None else "",
                                          f"{exits[0].name}:0" if exits else None))
        for var in loop.variables:  # a lowered v2 While passes its captures through as loop variables
            if var.next and loop.skip_identity(var.next) == loop.skip_identity(var.inside):
                loop.invariants[var.inside] = var.init
        loop.index()
        loops.append(loop)
    return loops


def _v2_loop(node: Any, graph: dict[str, Any], functions: dict[str, Any]) -> Loop | None:
    from tensorflow.python.framework import function_def_to_graph

    body = functions.get(node.attr["body"].func.name)
    if body is None:
        return None
    body_graph, flat = function_def_to_graph.function_def_to_graph_def(body)
    nodes = {n.name: n for n in body_graph.node}
    args = [arg.name for arg in body.signature.input_arg]
    rets = [tensor(flat.get(body.ret[arg.name], body.ret[arg.name])) for arg in body.signature.output_arg]
    inits = data_inputs(node)
    if not (len(args) == len(rets) == len(inits)):
        return None
    loop = Loop(node.name, 2, nodes, graph, [])
    for k, (arg, ret, init) in enumerate(zip(args, rets, inits, strict=True)):
        inside = f"{arg}:0"
        loop.variables.append(LoopVar(init, inside, ret, f"{node.name}:{k}"))
        if loop.skip_identity(ret) == inside:
            loop.invariants[inside] = init
    loop.index()
    return loop


def top_level(graph_def: Any) -> Loop:
    """The graph outside every v1 loop frame, viewed as a loop body with no variables (for unrolled cells)."""
    graph = {node.name: node for node in graph_def.node}
    frames: dict[str, list[Any]] = {}
    consumers: dict[str, list[Any]] = {}
    for node in graph.values():
        if node.op == "Enter":
            frames.setdefault(node.attr["frame_name"].s.decode(), []).append(node)
        for name in node.input:
            consumers.setdefault(node_of(name), []).append(node)
    framed = set().union(*_in_frames(frames, consumers).values())
    view = Loop("graph", 1, {name: node for name, node in graph.items() if name not in framed}, graph, [])
    view.index()
    return view


def find_loops(graph_def: Any) -> list[Loop]:
    """Every while loop of a (frozen) GraphDef, v1 frames and v2 While nodes."""
    graph = {node.name: node for node in graph_def.node}
    functions = {f.signature.name: f for f in graph_def.library.function}
    loops = _v1_loops(graph)
    for node in graph_def.node:
        if node.op in ("While", "StatelessWhile"):
            found = _v2_loop(node, graph, functions)
            if found is not None:
                loops.append(found)
    return loops
