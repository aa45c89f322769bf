"""Packed sequences: ``pad_packed_sequence`` pads only to the longest length in the batch.

The TorchScript exporter writes ``pack_padded_sequence`` -> nn.LSTM -> ``pad_packed_sequence`` as a
fused node fed ``sequence_lens``, whose Y is as long as the padded input; PyTorch's output is as long
as the longest sequence.  ``trim_to_longest`` slices each such Y to ``max(sequence_lens)`` steps (the
ONNX op already writes zeros past each sequence's end, as PyTorch does).  The converter keeps the
trimmed model only when parity says so (``total_length=`` keeps the full length).

The TorchScript exporter's peephole pass crashes (``vector::_M_range_check``) on a packed nn.LSTM whose
packed output is unused (a classifier reading only ``h_n``): ``packed_outputs_used`` makes the final
state depend on the padded output by adding ``0 * sum(padded)`` while the exporter traces (exact for finite
outputs; the parity proof checks the result).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from converters.annotations import GATE_ORDERS
from converters.pytorch_fuse import prune


def packed_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node
            if node.op_type in GATE_ORDERS and len(node.input) > 4 and node.input[4] and node.output[0]]


def trim_to_longest(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose fused nodes' Y stop at the longest sequence; None when no node reads sequence_lens."""
    if not packed_nodes(model):
        return None
    trimmed = onnx.ModelProto()
    trimmed.CopyFrom(model)
    graph = trimmed.graph
    for index, node in enumerate(graph.node):  # names key the nodes below
        node.name = node.name or f"{node.op_type}_packed_{index}"
    zero = f"{graph.name}_trim_zero"
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), zero))
    targets = {node.name for node in packed_nodes(trimmed)}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type not in GATE_ORDERS or node.name not in targets or len(node.input) < 5 or not node.input[4]:
            continue
        name = node.name
        full, longest, longest64 = f"{name}_Y_untrimmed", f"{name}_longest", f"{name}_longest64"
        y = node.output[0]
        node.output[0] = full
        nodes += [
            helper.make_node("Cast", [node.input[4]], [longest64], to=onnx.TensorProto.INT64, name=f"{name}_lens64"),
            helper.make_node("ReduceMax", [longest64], [longest], keepdims=1, name=f"{name}_longest"),
            helper.make_node("Slice", [full, zero, longest, zero], [y], name=f"{name}_trim"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return trimmed


def _touch(output: PackedSequence, state: Any) -> Any:
    padded, _ = pad_packed_sequence(output)  # the peephole pass removes a pack only before a pad
    zero = padded.sum() * 0
    if isinstance(state, tuple):
        return tuple(part + zero for part in state)
    return state + zero


@contextlib.contextmanager
def packed_outputs_used(model: Any) -> Iterator[None]:
    """While the block traces ``model``, every recurrent layer fed a PackedSequence uses its packed output."""
    handles = []
    if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        for module in model.modules():
            if isinstance(module, nn.RNNBase):
                def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
                    if args and isinstance(args[0], PackedSequence) and isinstance(output[0], PackedSequence):
                        return output[0], _touch(output[0], output[1])
                    return None

                handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _zero_scalar(model: onnx.ModelProto, name: str) -> bool:
    for init in model.graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return value.size == 1 and not value.any()
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            return value.size == 1 and not value.any()
    return False


def drop_zero_touch(model: onnx.ModelProto) -> None:
    """Undo ``packed_outputs_used`` in the exported graph: ``state + ReduceSum(...) * 0`` becomes ``state``."""
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for keep, touch in ((0, 1), (1, 0)):
            mul = producers.get(node.input[touch])
            if mul is None or mul.op_type != "Mul":
                continue
            inputs = list(mul.input)
            summed = [name for name in inputs if name in producers and producers[name].op_type == "ReduceSum"]
            zeros = [name for name in inputs if _zero_scalar(model, name)]
            if summed and zeros:
                node.op_type = "Identity"
                kept = node.input[keep]
                del node.input[:]
                node.input.append(kept)
                break
    prune(model)
