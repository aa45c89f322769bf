"""Fuse a cell stepped in a Python loop (unrolled by the exporter) into one ONNX LSTM/GRU/RNN node.

The exporter writes step t of ``for t in range(x.size(1)): h, c = cell(x[:, t], (h, c))`` as its own
ops, with the traced length baked in.  The forward hooks (converters.pytorch_cells) recorded every
call's inputs and outputs; the unrolled chain is found in the exported graph *by value*, whatever ops
the exporter chose:

- the step inputs must be consecutive slices ``X.take(t, axis)`` of one graph tensor X (axis 0 or 1);
- each call's state must be the state the previous call returned (a clean chain);
- the loop's results are used as the whole stack of step outputs (``torch.stack(steps, 0 or 1)``)
  and/or the last state: those tensors are recomputed from the fused node's Y / Y_h / Y_c.

Anything else (a step output used on its own, a state changed between steps, inputs fed back from
outputs) is refused by the caller naming the cell.  The chain's ops are then dead and pruned; the
converter proves the fused model at lengths other than the traced one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.pytorch_cells import CellCalls
from converters.pytorch_layers import RecurrentLayer, expected_weights
from converters.recurrent import make_recurrent_node
from converters.reference import intermediates

_TOL = 1e-6


class CellFusionError(ValueError):
    """The unrolled loop is not a clean chain over one sequence tensor (says what is not, and of which cell)."""

    record: CellCalls | None = None


def cell_layer(record: CellCalls) -> RecurrentLayer:
    prefix = f"{record.path}." if record.path else ""
    variables = {"forward.W": f"{prefix}weight_ih", "forward.R": f"{prefix}weight_hh"}
    if getattr(record.module, "bias", False):
        variables.update({"forward.Wb": f"{prefix}bias_ih", "forward.Rb": f"{prefix}bias_hh"})
    return RecurrentLayer(record.path, 0, record.op, ("forward",), variables, cell=True)


def _float_tensors(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The value of every float tensor the graph computes (and of its float inputs) on ``feeds``."""
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {info.name for info in inferred.graph.value_info
              if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    floats |= {out.name for out in model.graph.output if out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names = [out for node in model.graph.node for out in node.output if out in floats]
    values = intermediates(model, feeds, names) if names else {}
    values.update({name: value for name, value in feeds.items() if np.asarray(value).dtype == np.float32})
    return values


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=_TOL))


def _matches(values: dict[str, np.ndarray], want: np.ndarray) -> list[str]:
    return [name for name, value in values.items() if _same(np.asarray(value), want)]


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy()


def _steps(record: CellCalls) -> tuple[list[np.ndarray], list[Any], list[np.ndarray], list[np.ndarray]]:
    """(step inputs, state passed to each step, h returned by each step, c returned by each step)."""
    xs, states, hs, cs = [], [], [], []
    for args, output in record.calls:
        xs.append(_numpy(args[0]))
        states.append(args[1] if len(args) > 1 else None)
        if isinstance(output, (tuple, list)):
            hs.append(_numpy(output[0]))
            cs.append(_numpy(output[1]))
        else:
            hs.append(_numpy(output))
    return xs, states, hs, cs


def _check_chain(states: list[Any], hs: list[np.ndarray], cs: list[np.ndarray]) -> None:
    for step in range(1, len(states)):
        state = states[step]
        given = [state] if not isinstance(state, (tuple, list)) else list(state)
        returned = [hs[step - 1]] + ([cs[step - 1]] if cs else [])
        if state is None or len(given) != len(returned) or not all(
                _same(_numpy(a), b) for a, b in zip(given, returned, strict=True)):
            raise CellFusionError(f"the state passed to step {step} is not the state step {step - 1} returned")


def _sequence(values: dict[str, np.ndarray], xs: list[np.ndarray]) -> tuple[str, int]:
    steps = len(xs)
    for name, value in values.items():
        value = np.asarray(value)
        for axis in (1, 0):
            if value.ndim == xs[0].ndim + 1 and value.shape[axis] == steps and all(
                    _same(np.take(value, t, axis=axis), xs[t]) for t in range(steps)):
                return name, axis
    raise CellFusionError("the step inputs are not consecutive time steps of one tensor")


class _Builder:
    def __init__(self, model: onnx.ModelProto, prefix: str) -> None:
        self.model, self.prefix, self.count = model, prefix, 0
        self.nodes: list[onnx.NodeProto] = []

    def const(self, values: Iterable[int]) -> str:
        name = self._name("const")
        self.model.graph.initializer.append(numpy_helper.from_array(np.array(list(values), np.int64), name))
        return name

    def add(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        output = output or self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=self._name(op), **attrs))
        return output

    def _name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}/{what}_{self.count}"


def fuse_cell_loop(model: onnx.ModelProto, record: CellCalls, feeds: dict[str, np.ndarray],
                   params: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, set[str]]:
    """A copy of ``model`` with a fused node for ``record``'s loop, and the chain's tensors (not pruned yet)
    that must be dead once every loop is fused."""
    xs, states, hs, cs = _steps(record)
    _check_chain(states, hs, cs)
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    values = _float_tensors(fused, feeds)
    source, axis = _sequence(values, xs)
    prefix = (record.path or "cell").replace(".", "_") + "_loop"
    build = _Builder(fused, prefix)
    sequence = build.add("Transpose", [source], perm=[1, 0, 2]) if axis == 1 else source

    initial = {"h": "", "c": ""}
    first = states[0]
    first_state = [] if first is None else ([first] if not isinstance(first, (tuple, list)) else list(first))
    for key, tensor in zip(("h", "c"), first_state, strict=False):
        value = _numpy(tensor)
        if not value.any():
            continue  # zeros: the fused op's default initial state
        found = _matches(values, value)
        if not found:
            raise CellFusionError(f"the initial {key} state is not a tensor of the graph")
        initial[key] = build.add("Unsqueeze", [found[0], build.const([0])])

    layer = cell_layer(record)
    op = record.op
    attributes: dict[str, Any] = {}
    if op == "GRU":
        attributes["linear_before_reset"] = 1
    if op == "RNN":
        attributes["activations"] = ["Relu" if record.module.nonlinearity == "relu" else "Tanh"]
    outputs = [f"{prefix}/Y", f"{prefix}/Y_h"] + ([f"{prefix}/Y_c"] if op == "LSTM" else [])
    weight, recurrence, bias = expected_weights(layer, params)
    node, initializers = make_recurrent_node(
        op=op, name=f"{prefix}/{op}", x=sequence, weights=(weight, recurrence, bias), outputs=outputs,
        initial_h=initial["h"], initial_c=initial["c"], attributes=attributes)
    build.nodes.append(node)
    fused.graph.initializer.extend(initializers)

    steps = build.add("Squeeze", [outputs[0], build.const([1])])  # [T, B, H]
    replacements: list[tuple[np.ndarray, str]] = [
        (np.stack(hs, axis=0), steps),
        (np.stack(hs, axis=1), build.add("Transpose", [steps], perm=[1, 0, 2])),
        (hs[-1], build.add("Squeeze", [outputs[1], build.const([0])])),
    ]
    if cs:
        replacements.append((cs[-1], build.add("Squeeze", [outputs[2], build.const([0])])))
    # single steps, read back from Y at a fixed index: only another fused loop may consume them
    single = [(hs[step], build.add("Gather", [steps, _scalar(build, step)], axis=0))
              for step in range(len(hs) - 1)]
    producers = {out: node for node in fused.graph.node for out in node.output}
    watch = {name for value in cs[:-1] for name in _matches(values, value) if name in producers}
    leaving = 0
    for index, (want, expression) in enumerate(replacements + single):
        for name in _matches(values, want):
            if name not in producers:
                continue
            producer = producers[name]
            producer.output[list(producer.output).index(name)] = f"{name}__unrolled"
            build.add("Identity", [expression], output=name)
            watch.add(f"{name}__unrolled")
            if index >= len(replacements):
                watch.add(name)
            else:
                leaving += 1
    if not leaving:
        raise CellFusionError("neither the stacked step outputs nor the last state leave the loop")
    _insert_after_producers(fused, build.nodes)
    return fused, watch


def _scalar(build: _Builder, value: int) -> str:
    name = build._name("index")
    build.model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    return name


def fuse_cell_loops(model: onnx.ModelProto, records: list[CellCalls], feeds: dict[str, np.ndarray],
                    params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Every recorded loop fused in turn (a loop over another's steps reads the first one's Y), then pruned.

    Raises CellFusionError (with ``record``) when a loop is not a clean chain or one of its single
    steps is still needed once every loop is fused.
    """
    fused = model
    watched: dict[str, CellCalls] = {}
    for record in records:
        try:
            fused, watch = fuse_cell_loop(fused, record, feeds, params)
        except CellFusionError as exc:
            exc.record = record
            raise
        watched.update(dict.fromkeys(watch, record))
    prune(fused)
    for node in fused.graph.node:
        for name in node.output:
            if name in watched:
                error = CellFusionError("a single step's output is used outside the loop")
                error.record = watched[name]
                raise error
    return fused


def _insert_after_producers(model: onnx.ModelProto, new: list[onnx.NodeProto]) -> None:
    """Topologically sort old and new nodes together (new ones read tensors old ones make)."""
    nodes = [_copy(node) for node in model.graph.node] + new
    available = {value.name for value in model.graph.input} | {init.name for init in model.graph.initializer}
    available.add("")
    ordered: list[onnx.NodeProto] = []
    pending = nodes
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise CellFusionError("the fused graph has a cycle")
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [node for node in pending if all(node is not other for other in ready)]
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def prune(model: onnx.ModelProto) -> None:
    """Drop the nodes and initializers nothing that reaches an output needs."""
    needed = {out.name for out in model.graph.output}
    kept = []
    for node in reversed([_copy(node) for node in model.graph.node]):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # subgraphs read outer tensors by name
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    needed.update(name for inner in sub.node for name in inner.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    needed |= {value.name for value in model.graph.input}  # an initializer listed as an input stays
    initializers = [_copy(init) for init in model.graph.initializer if init.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)


def _copy(message: Any) -> Any:
    """A detached copy: a repeated field's elements do not outlive ``del field[:]`` everywhere."""
    copied = type(message)()
    copied.CopyFrom(message)
    return copied
