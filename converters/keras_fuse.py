"""The fused ONNX subgraph that stands in for one Keras recurrent layer call (numpy + onnx only).

keras_markers.py traces the model with each recurrent layer replaced by a placeholder node whose
inputs are the layer's (batch-major sequence, optional mask, optional initial states) and whose
outputs are the layer's (output or outputs, then states when ``return_state``).  ``fuse`` builds,
from the layer's own weights, what Keras computes there: Transpose to time-major, one LSTM/GRU/RNN
node (one bidirectional node for a Bidirectional wrapper; one node per cell, chained, for an RNN over
StackedRNNCells) and the ops that give back Keras' output structure — masks through masking.py, merge
modes, state outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from converters.keras_layers import GraphBuilder
from converters.masking import compact, restore

STATE_COUNT = {"LSTM": 2, "GRU": 1, "RNN": 1}


@dataclass
class FusedCell:
    """One fused node's weights and what its annotation says about them."""

    op: str  # LSTM, GRU or RNN
    weights: tuple[np.ndarray, np.ndarray, np.ndarray]  # ONNX W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H]
    attributes: dict[str, Any]  # activations, activation_alpha/beta, linear_before_reset
    variables: dict[str, str]
    source_gate_order: tuple[str, ...]
    gate_map: dict[str, str]
    notes: str = ""
    node_name: str = ""  # set by fuse

    @property
    def hidden(self) -> int:
        return int(self.weights[1].shape[-1])

    @property
    def states(self) -> int:
        return STATE_COUNT[self.op]


@dataclass
class RecurrentSite:
    """One call of a Keras recurrent layer, as the placeholder node and the fused node(s) need it: one cell,
    or (RNN over StackedRNNCells) one per stacked cell, each a node reading the one before."""

    index: int
    layer: str  # Keras layer name (the Bidirectional wrapper's for a bidirectional node)
    cells: list[FusedCell]
    bidirectional: bool = False
    go_backwards: bool = False
    return_sequences: bool = False
    return_state: bool = False
    merge_mode: str | None = "concat"
    zero_output_for_mask: bool = False
    has_mask: bool = False
    initial_states: int = 0
    folded: dict[str, Any] = field(default_factory=dict)  # set by fuse

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def hidden(self) -> int:
        return self.cells[-1].hidden

    def state_sizes(self) -> list[int]:
        """Hidden size of each Keras state, in Keras' order: per direction, per cell, h then c."""
        return [cell.hidden for _ in range(self.directions) for cell in self.cells for _ in range(cell.states)]

    def output_count(self) -> int:
        main = 2 if self.bidirectional and self.merge_mode is None else 1
        return main + (len(self.state_sizes()) if self.return_state else 0)


def _state_index(site: RecurrentSite, direction: int, cell: int, slot: int) -> int:
    per_direction = sum(each.states for each in site.cells)
    return direction * per_direction + sum(each.states for each in site.cells[:cell]) + slot


def _reverse_time(b: GraphBuilder, tensor: str, base: str) -> str:
    """Flip axis 1 (time) of a batch-major tensor: Keras' go_backwards reads the sequence last step first."""
    starts, ends = b.const(f"{base}/rev_starts", np.array([-1], np.int64)), b.const(
        f"{base}/rev_ends", np.array([np.iinfo(np.int64).min], np.int64))
    axes, steps = b.const(f"{base}/rev_axes", np.array([1], np.int64)), b.const(
        f"{base}/rev_steps", np.array([-1], np.int64))
    return b.add("Slice", [tensor, starts, ends, axes, steps], base=f"{base}/reverse_time")[0]


def _initial_state(b: GraphBuilder, site: RecurrentSite, states: list[str], cell: int, slot: int) -> str:
    """Keras passes [N, H] states, forward ones first; ONNX wants [D, N, H]."""
    axis = b.const(f"{site.layer}/state_axis", np.array([0], np.int64))
    parts = [b.add("Unsqueeze", [states[_state_index(site, d, cell, slot)], axis],
                   base=f"{site.layer}/initial_state")[0] for d in range(site.directions)]
    return parts[0] if len(parts) == 1 else b.add("Concat", parts, base=f"{site.layer}/initial_state", axis=0)[0]


def _merge(b: GraphBuilder, site: RecurrentSite, y: str, axis: int, outputs: list[str]) -> None:
    """Merge the direction axis of ``y`` ([N, T, D, H] or [N, D, H]) the way the Bidirectional wrapper does."""
    base = site.layer
    if not site.bidirectional:
        b.add("Squeeze", [y, b.const(f"{base}/direction_axis", np.array([axis], np.int64))], base=f"{base}/output",
              names=[outputs[0]])
        return
    mode = site.merge_mode
    axes = b.const(f"{base}/direction_axis", np.array([axis], np.int64))
    if mode is None:
        for direction, name in enumerate(outputs[:2]):
            index = b.const(f"{base}/direction{direction}", np.array(direction, np.int64))
            b.add("Gather", [y, index], base=f"{base}/direction{direction}", names=[name], axis=axis)
    elif mode == "concat":  # forward features first, then backward: a reshape of [.., 2, H]
        shape = np.array([0] * axis + [-1], np.int64)
        b.add("Reshape", [y, b.const(f"{base}/concat_shape", shape)], base=f"{base}/concat", names=[outputs[0]])
    else:
        if mode in ("sum", "ave"):  # ReduceSum takes axes as an input from opset 13 on (ReduceMean only from 18)
            total = b.add("ReduceSum", [y, axes], base=f"{base}/sum", keepdims=0,
                          names=[outputs[0]] if mode == "sum" else [])[0]
            if mode == "ave":
                half = b.const(f"{base}/half", np.array(0.5, np.float32))
                b.add("Mul", [total, half], base=f"{base}/ave", names=[outputs[0]])
        elif mode == "mul":
            parts = [b.add("Gather", [y, b.const(f"{base}/direction{d}", np.array(d, np.int64))],
                           base=f"{base}/direction{d}", axis=axis)[0] for d in range(2)]
            b.add("Mul", parts, base=f"{base}/mul", names=[outputs[0]])
        else:
            raise ValueError(f"Bidirectional merge_mode {mode!r}")


def fuse(b: GraphBuilder, site: RecurrentSite, inputs: list[str], outputs: list[str]) -> None:
    """Append the subgraph for ``site`` reading the placeholder's ``inputs`` and writing its ``outputs``."""
    base = site.layer
    x, rest = inputs[0], list(inputs[1:])
    mask = rest.pop(0) if site.has_mask else None
    states = rest[:site.initial_states]
    folded: dict[str, Any] = {"layout": "batch-major Keras tensors transposed to time-major around the node"}
    if site.go_backwards:
        x = _reverse_time(b, x, base)
        mask = _reverse_time(b, mask, f"{base}/mask") if mask else None
        folded["go_backwards"] = "input (and mask) reversed in time before the node; outputs stay in that order"
    lens = ""
    positions = None
    if mask:
        x, lens, positions = compact(b, x, mask, base=base)
        folded["mask"] = ("unmasked steps moved to the front of each sequence, sequence_lens = their count; "
                          "outputs gathered back with Keras' carry-over"
                          + (" (zeros at masked steps)" if site.zero_output_for_mask else ""))
        folded["sequence_lens"] = lens
    x_time = b.add("Transpose", [x], base=f"{base}/to_time_major", perm=[1, 0, 2])[0]
    if states:
        folded["initial_state"] = f"{len(states)} Keras state inputs stacked per direction"
    direction = "bidirectional" if site.bidirectional else "forward"
    results = []
    for k, cell in enumerate(site.cells):
        initial = [_initial_state(b, site, states, k, slot) if states else "" for slot in range(cell.states)]
        weight, recurrence, bias = cell.weights
        node_inputs = [x_time, b.const(f"{base}/W", weight), b.const(f"{base}/R", recurrence),
                       b.const(f"{base}/B", bias), lens, *initial]
        while not node_inputs[-1]:
            node_inputs.pop()
        fused = b.add(cell.op, node_inputs, base=f"{base}/{cell.op}", outputs=1 + cell.states,
                      hidden_size=cell.hidden, direction=direction, layout=0, **cell.attributes)
        cell.node_name = b.nodes[-1].name
        results.append(fused)
        if k + 1 < len(site.cells):  # the next stacked cell reads this one's sequence (one direction: squeeze D)
            x_time = b.add("Squeeze", [fused[0], b.const(f"{base}/stack_axis", np.array([1], np.int64))],
                           base=f"{base}/stacked_sequence")[0]
    fused = results[-1]
    main = outputs[:2] if site.bidirectional and site.merge_mode is None else outputs[:1]
    if site.return_sequences:
        y = b.add("Transpose", [fused[0]], base=f"{base}/to_batch_major", perm=[2, 0, 1, 3])[0]  # [N, T, D, H]
        if positions is not None and mask is not None:
            y = restore(b, y, positions, mask, zero_masked=site.zero_output_for_mask, base=base)
        _merge(b, site, y, 2, main)
    else:
        last = b.add("Transpose", [fused[1]], base=f"{base}/last_batch_major", perm=[1, 0, 2])[0]  # [N, D, H]
        if site.zero_output_for_mask and mask is not None:
            last = _zero_if_last_masked(b, last, mask, base)
        _merge(b, site, last, 1, main)
    if site.return_state:
        state_names = outputs[len(main):]
        for d in range(site.directions):
            index = b.const(f"{base}/state_direction{d}", np.array(d, np.int64))
            for k, (cell, produced) in enumerate(zip(site.cells, results, strict=True)):
                for slot in range(cell.states):
                    b.add("Gather", [produced[1 + slot], index], base=f"{base}/state",
                          names=[state_names[_state_index(site, d, k, slot)]], axis=0)
        folded["return_state"] = "Y_h (and Y_c) split per direction, forward states first"
    site.folded = folded


def _zero_if_last_masked(b: GraphBuilder, last: str, mask: str, base: str) -> str:
    """zero_output_for_mask on a layer that returns only its last output: 0 where the last step is masked."""
    index = b.const(f"{base}/last_step", np.array([-1], np.int64))
    step = b.add("Gather", [mask, index], base=f"{base}/last_mask", axis=1)[0]  # [N, 1]
    as_float = b.add("Cast", [step], base=f"{base}/last_mask_float", to=onnx.TensorProto.FLOAT)[0]
    axis = b.const(f"{base}/last_mask_axis", np.array([2], np.int64))
    scale = b.add("Unsqueeze", [as_float, axis], base=f"{base}/last_mask_scale")[0]  # [N, 1, 1]
    return b.add("Mul", [last, scale], base=f"{base}/last_zeroed")[0]
