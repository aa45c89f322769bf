"""Step form of a recurrent model (``--stateful``): the server carries h (and c) between requests.

Every fused LSTM/GRU/RNN node gets its initial state from a new graph input and hands its final
state to a new graph output, both batch-major ``[batch, directions, hidden]`` (the server's
convention, server/core/sequences.py), and the pairs are listed in the model's ``metadata_props``
under ``modelbridge.state``; each node's annotation records its pair under ``state``.  Fed zeros,
the step form computes exactly what the original model does; fed the state it returned, the next
chunk continues the sequence.

Refused, each with a StatefulError naming the node (and its source layer when annotated): reverse
and bidirectional nodes (a reverse direction needs the future), layout 1, per-sample sequence_lens
computed from the input (a zero-length step resets the state), and an initial state that is a graph
input, is computed from input values, or is a non-zero constant -- the server starts every sequence
from zeros.  A zero initial state (an initializer, or zeros sized from the input's shape as
exporters emit) is replaced, and its now-dead builder pruned.  The tensors are named
``state_<k>_h``/``state_<k>_h_out`` (and ``_c`` for an LSTM), k counting recurrent nodes in graph
order (docs/annotations.md).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx

from converters.annotations import (
    ANNOTATION_KEY,
    GATE_ORDERS,
    describe_node,
    node_annotation,
    read_annotations,
)
from converters.parity import random_feeds, run_onnx, set_metadata, specs_of
from converters.weights import NotConstantError, resolve

STATE_KEY = "modelbridge.state"
# Ops whose output depends only on the SHAPE of their first input, never on its values.
_SHAPE_ONLY = {"Shape", "Size"}


class StatefulError(ValueError):
    """A model that cannot be exported in step form (names the node and why)."""


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name the graph's nodes read, including those of Loop/If/Scan bodies (outer-scope reads)."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= _names_read(body)
    return names


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers nobody reads (the zero states we replaced and their builders)."""
    while True:
        used = _names_read(graph) | {out.name for out in graph.output}
        dead = [index for index, node in enumerate(graph.node) if not any(out in used for out in node.output if out)]
        if not dead:
            break
        for index in reversed(dead):
            del graph.node[index]
    inputs = {value.name for value in graph.input}
    unused = [index for index, init in enumerate(graph.initializer) if init.name not in used | inputs]
    for index in reversed(unused):
        del graph.initializer[index]


def _data_dependent(graph: onnx.GraphProto) -> dict[str, str]:
    """Tensors whose VALUES depend on a graph input, each mapped to the graph input it comes from.

    A zero state built as Expand(0, Shape(x)) depends on x's shape only: it is a constant zero for
    the step form.  Nodes with subgraphs (Loop/If/Scan) count as dependent when any input is.
    """
    initializers = {init.name for init in graph.initializer}
    dependent = {value.name: value.name for value in graph.input if value.name not in initializers}
    for node in graph.node:  # graph.node is topologically sorted (onnx.checker requires it)
        if node.op_type in _SHAPE_ONLY:
            continue
        origin = next((dependent[name] for name in node.input if name in dependent), None)
        if origin is not None:
            dependent.update({out: origin for out in node.output if out})
    return dependent


def _check_initial_state(model: onnx.ModelProto, name: str, *, label: str, kind: str,
                         dependent: dict[str, str]) -> None:
    """Refuse an initial state the step form would silently change: computed, or a non-zero constant."""
    graph = model.graph
    if not name:
        return
    if any(value.name == name for value in graph.input) and name in dependent:
        raise StatefulError(f"{label} already takes initial_{kind} from graph input {name!r}; the step form "
                            "would replace it with the state the server carries")
    if name in dependent:
        producer = next((node for node in graph.node if name in node.output), None)
        made_by = f" (made by {producer.op_type} node {producer.name!r})" if producer is not None else ""
        raise StatefulError(f"{label}: initial_{kind} is tensor {name!r}{made_by}, computed from input "
                            f"{dependent[name]!r}; only a constant zero initial state can become the server's "
                            "carried state")
    try:
        value = resolve(model, name)
    except NotConstantError:  # built from input shapes only (a zero state sized to the batch): run it
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        value = run_onnx(probe, random_feeds(probe))[name]
    if np.any(value != 0):
        raise StatefulError(f"{label}: initial_{kind} is a non-zero constant (tensor {name!r}, max |value| "
                            f"{float(np.max(np.abs(value))):.3g}); the server starts every sequence from zeros, "
                            "so the step form would change the model's answers")


def make_stateful(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose recurrent nodes take and return their state as graph inputs/outputs."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    nodes = [node for node in graph.node if node.op_type in GATE_ORDERS]
    if not nodes:
        raise StatefulError("the model has no LSTM/GRU/RNN node, so it has no state to carry")
    pairs: list[dict[str, str]] = []
    entries = {entry["node"]: entry for entry in read_annotations(result)}
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    dependent = _data_dependent(graph)
    for index, node in enumerate(nodes):
        described = describe_node(result, node)
        layer = (node_annotation(node) or entries.get(node.name) or {}).get("source", {}).get("layer")
        label = f"{node.op_type} node {node.name!r}" + (f" (layer {layer!r})" if layer else "")
        if described["direction"] != "forward":
            raise StatefulError(f"{label} runs {described['direction']}: it reads the sequence backwards, "
                                "and a reverse direction needs the future, so it cannot be streamed step by step")
        if described["layout"] != 0:
            raise StatefulError(f"{label} has layout {described['layout']} (batch-major); the step form needs "
                                "layout 0 (sequence-major), which our converters always emit")
        if len(node.input) > 4 and node.input[4] in dependent:
            # A step past a sample's length makes ONNX emit zeros for Y_h/Y_c: the carried state would reset.
            raise StatefulError(f"{label} takes per-sample sequence_lens {node.input[4]!r} computed from input "
                                f"{dependent[node.input[4]]!r} (masking/padding); a step past a sample's length "
                                "would reset its carried state, so it cannot be streamed")
        for slot, kind in ((5, "h"), (6, "c")):
            if len(node.input) > slot:
                _check_initial_state(model, node.input[slot], label=label, kind=kind, dependent=dependent)
        kinds = ["h", "c"] if node.op_type == "LSTM" else ["h"]
        weight_dtype = resolve(result, node.input[1]).dtype  # the state has X's (= W's) element type
        while len(node.input) < 5 + len(kinds):
            node.input.append("")
        while len(node.output) < 1 + len(kinds):
            node.output.append("")
        state: dict[str, Any] = {}
        for kind in kinds:
            slot = 5 if kind == "h" else 6
            state_in, state_out = f"state_{index}_{kind}", f"state_{index}_{kind}_out"
            fed, returned = f"{node.name}.initial_{kind}", node.output[slot - 4] or f"{node.name}.Y_{kind}"
            node.output[slot - 4] = returned
            node.input[slot] = fed
            dtype = onnx.helper.np_dtype_to_tensor_dtype(weight_dtype)
            shape = ["batch", 1, described["hidden_size"]]
            graph.input.append(onnx.helper.make_tensor_value_info(state_in, dtype, shape))
            graph.output.append(onnx.helper.make_tensor_value_info(state_out, dtype, shape))
            position = list(graph.node).index(node)
            new_nodes.append((position, onnx.helper.make_node("Transpose", [state_in], [fed], perm=[1, 0, 2],
                                                              name=f"{node.name}.state_{kind}_in")))
            graph.node.append(onnx.helper.make_node("Transpose", [returned], [state_out], perm=[1, 0, 2],
                                                    name=f"{node.name}.state_{kind}_out"))
            pairs.append({"input": state_in, "output": state_out})
            state[f"initial_{kind}"] = {"input": state_in, "output": state_out, "shape": "[batch, 1, hidden_size]",
                                        "initial": "zeros"}
        state["initial_state"] = "zeros"
        entry = node_annotation(node) or entries.get(node.name)
        if entry is not None:
            entry["state"] = state
            set_metadata(node.metadata_props, ANNOTATION_KEY, json.dumps(entry, sort_keys=True))
            entries[node.name] = entry
    for position, transpose in sorted(new_nodes, key=lambda item: -item[0]):
        graph.node.insert(position, transpose)
    _prune(graph)
    if entries:
        ordered = [entries[node.name] for node in nodes if node.name in entries]
        set_metadata(result.metadata_props, ANNOTATION_KEY, json.dumps(ordered, sort_keys=True))
    set_metadata(result.metadata_props, STATE_KEY, json.dumps(pairs))
    onnx.checker.check_model(result)
    return result


def state_pairs(model: onnx.ModelProto) -> list[dict[str, str]]:
    for prop in model.metadata_props:
        if prop.key == STATE_KEY:
            value: list[dict[str, str]] = json.loads(prop.value)
            return value
    return []


def check_streaming(
    original: onnx.ModelProto, stateful: onnx.ModelProto, *, time_axis: int = 1, steps: int = 6, atol: float = 1e-5
) -> float:
    """Prove the step form: zero state == original, and step-by-step final state == whole-sequence state.

    Sequence inputs are split along ``time_axis``.  Returns the largest difference seen.
    """
    pairs = state_pairs(stateful)
    state_names = {pair["input"] for pair in pairs}
    specs = [spec for spec in specs_of(stateful) if spec.name not in state_names]
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        shape = list(spec.concrete_shape(dynamic=2))
        if len(shape) > time_axis and spec.shape[time_axis] is not None:
            raise StatefulError(
                f"input {spec.name!r} has a fixed length {spec.shape[time_axis]} on time axis {time_axis}, so it "
                f"cannot be fed one step at a time; convert it with that dimension dynamic (-1 in --input)"
            )
        if len(shape) > time_axis:
            shape[time_axis] = steps
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    batch = next(iter(feeds.values())).shape[0]
    zeros = zero_state(stateful, batch)
    worst = 0.0
    whole = run_onnx(stateful, {**feeds, **zeros})
    plain = run_onnx(original, feeds)
    for name, value in plain.items():
        worst = max(worst, float(np.max(np.abs(whole[name] - value))))
    carried = dict(zeros)
    for step in range(steps):
        chunk = {name: np.take(value, [step], axis=time_axis) if value.ndim > time_axis else value
                 for name, value in feeds.items()}
        out = run_onnx(stateful, {**chunk, **carried})
        carried = {pair["input"]: out[pair["output"]] for pair in pairs}
    for pair in pairs:
        worst = max(worst, float(np.max(np.abs(carried[pair["input"]] - whole[pair["output"]]))))
    if worst > atol:
        raise StatefulError(f"the step form does not reproduce the whole sequence (max difference {worst:.3g} > "
                            f"{atol:g}); is time axis {time_axis} right, and is every step independent of later ones?")
    return worst


def zero_state(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """The state feeds a sequence starts from: zeros of ``[batch, 1, hidden]`` for every pair."""
    inputs = {value.name: value.type.tensor_type for value in model.graph.input}
    return {
        pair["input"]: np.zeros(
            (batch, *[dim.dim_value for dim in inputs[pair["input"]].shape.dim[1:]]),
            onnx.helper.tensor_dtype_to_np_dtype(inputs[pair["input"]].elem_type),
        )
        for pair in state_pairs(model)
    }


def run_steps(
    model: onnx.ModelProto, name: str, sequence: np.ndarray, *, time_axis: int = 1
) -> list[dict[str, np.ndarray]]:
    """Feed ``sequence`` to input ``name`` one step at a time, carrying the state as the server does.

    Returns each step's outputs, state outputs left out.
    """
    pairs = state_pairs(model)
    hidden = {pair["output"] for pair in pairs}
    state = zero_state(model, sequence.shape[0])
    steps = []
    for step in range(sequence.shape[time_axis]):
        out = run_onnx(model, {name: np.take(sequence, [step], axis=time_axis), **state})
        state = {pair["input"]: out[pair["output"]] for pair in pairs}
        steps.append({key: value for key, value in out.items() if key not in hidden})
    return steps


def streaming_error(model: onnx.ModelProto, name: str, sequence: np.ndarray, *, time_axis: int = 1) -> float:
    """Largest difference between each step's outputs and the whole prefix up to it run at once.

    An output with a time axis is compared at its last step; one without (a return_sequences=False
    model) is the answer after the prefix, which is what each step answers too.
    """
    worst = 0.0
    for step, outputs in enumerate(run_steps(model, name, sequence, time_axis=time_axis)):
        prefix = np.take(sequence, range(step + 1), axis=time_axis)
        whole = run_onnx(model, {name: prefix, **zero_state(model, sequence.shape[0])})
        for key, value in outputs.items():
            expected = whole[key]
            if expected.ndim > time_axis and expected.shape[time_axis] == step + 1 != value.shape[time_axis]:
                expected = np.take(expected, [step], axis=time_axis)
            worst = max(worst, float(np.max(np.abs(value - expected))))
    return worst
