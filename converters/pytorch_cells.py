"""nn.LSTMCell / GRUCell / RNNCell stepped over time in Python: found by counting calls, never unrolled silently.

A cell called once per forward is one step of plain ops.  A cell called several times is a recurrent
layer written as a Python loop; every exporter unrolls that loop into a chain of per-step ops with the
traced length baked in.  The converter runs the module once with forward hooks that count the calls
(and keep each call's inputs and outputs for fusing the chain, converters.pytorch_fuse).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from converters.pytorch_layers import UnsupportedModelError

CELL_TYPES: dict[type[nn.Module], str] = {nn.LSTMCell: "LSTM", nn.GRUCell: "GRU", nn.RNNCell: "RNN"}


@dataclass
class CellCalls:
    """Every call of one cell module during one forward: (inputs, outputs) as tensors."""

    path: str
    module: nn.Module
    calls: list[tuple[tuple[Any, ...], Any]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return f"nn.{type(self.module).__name__}"

    @property
    def op(self) -> str:
        return next(op for klass, op in CELL_TYPES.items() if isinstance(self.module, klass))

    @property
    def label(self) -> str:
        return f"model.{self.path} ({self.kind})" if self.path else f"model ({self.kind})"


@contextlib.contextmanager
def cell_calls(model: Any) -> Iterator[dict[str, CellCalls]]:
    """Count (and record) the calls of every cell module while the block runs the model."""
    found: dict[str, CellCalls] = {}
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        yield found
        return
    handles = []
    for path, module in model.named_modules():
        if isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
            record = found[path] = CellCalls(path, module)

            def hook(_module: nn.Module, args: tuple[Any, ...], output: Any, record: CellCalls = record) -> None:
                record.calls.append((_detach(args), _detach(output)))

            handles.append(module.register_forward_hook(hook))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(item) for item in value)
    return value


def stepped(calls: dict[str, CellCalls]) -> list[CellCalls]:
    """The cells called more than once in one forward: recurrent layers written as Python loops."""
    return [record for record in calls.values() if len(record.calls) > 1]


def refusal(record: CellCalls, reason: str = "") -> str:
    steps = len(record.calls)
    layer = record.op
    why = f" ({reason})" if reason else ""
    return (
        f"{record.label} is stepped {steps} times in a Python loop; it cannot be fused into one ONNX {layer} "
        f"node{why}, and writing it out unrolled would fix the sequence length at {steps} and leave no "
        f"recurrent node to annotate. Run an nn.{layer} over the whole sequence instead (its weight_ih_l0, "
        f"weight_hh_l0, bias_ih_l0, bias_hh_l0 are the cell's weight_ih, weight_hh, bias_ih, bias_hh)"
    )



_CELL_BY_GATES = {4: "LSTMCell", 3: "GRUCell", 1: "RNNCell"}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def refuse_unrolled_cells(model: onnx.ModelProto, params: dict[str, np.ndarray]) -> None:
    """Sources without hooks (TorchScript, ExportedProgram): a cell's weight_ih read by several steps, or a
    Loop/Scan in a graph holding a cell, is a Python loop over a cell — refused, naming the cell."""
    cells = [name.removesuffix("weight_ih") for name in params if name.endswith("weight_ih")
             and f"{name.removesuffix('weight_ih')}weight_hh" in params]
    if not cells:
        return
    constants = _constants(model)
    looping = sorted({node.op_type for node in model.graph.node if node.op_type in ("Loop", "Scan")})
    for prefix in cells:
        weight = params[f"{prefix}weight_ih"]
        hidden = params[f"{prefix}weight_hh"].shape[1]
        kind = _CELL_BY_GATES.get(weight.shape[0] // hidden, "cell")
        same = {name for name, value in constants.items()
                if (value.shape == weight.shape and np.array_equal(value, weight))
                or (value.shape == weight.T.shape and np.array_equal(value, weight.T))}
        uses = sum(1 for node in model.graph.node for name in node.input if name in same)
        if uses > 1 or looping:
            path = prefix.rstrip(".")
            how = f"in a {'/'.join(looping)}" if looping else f"{uses} times, unrolled"
            raise UnsupportedModelError(
                f"model.{path} (nn.{kind}) is stepped {how} in a loop; a TorchScript or ExportedProgram file no "
                f"longer says which steps belong to the loop, so it is neither fused nor written out unrolled. "
                f"Convert the nn.Module through the Python API (converters.convert(model, inputs=...): a clean "
                f"loop over the sequence is fused into one ONNX node there) or use nn.{kind.removesuffix('Cell')} "
                "over the whole sequence"
            )
