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

import torch
from torch import nn

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

