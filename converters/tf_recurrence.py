"""A dynamic_rnn-style while loop, read as what it computes: its cells in stack order and its boundary.

The boundary is in outer-graph tensors: the time-major input the loop reads step by step (a TensorArray
scatter in v1, a TensorList in v2), the sequence lengths of the ``where(time >= lengths, old, new)``
copy-through, each cell state's initial and final value, and the stacked per-step output of the last
cell.  A loop is taken only when every loop variable is accounted for: a cell state, the input or
output list, or a counter.  Anything else stays for tf2onnx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from converters.tf_cell_ops import Cell, NotACell, find_cells
from converters.tf_loops import Loop, LoopVar, data_inputs, node_of, top_level

_SELECT = ("Select", "SelectV2")


@dataclass
class State:
    cell: int  # index into Recurrence.cells
    role: str  # "h" or "c"
    init: str  # outer tensors
    final: str | None


@dataclass
class Recurrence:
    loop: Loop
    cells: list[Cell]
    x: str  # outer time-major input [T, B, I]
    lengths: str | None = None  # outer [B] int tensor
    output: str | None = None  # outer [T, B, H] tensor, None when unused
    states: list[State] = field(default_factory=list)


def _ordered(loop: Loop, cells: list[Cell]) -> list[Cell]:
    """Stack order: each cell's step input is the previous cell's new h."""
    by_output = {loop.skip_identity(cell.new_h): cell for cell in cells}
    first = [cell for cell in cells if loop.skip_identity(cell.x) not in by_output]
    if len(first) != 1:
        raise NotACell("the cells do not form one stack")
    order = first
    while len(order) < len(cells):
        following = [c for c in cells if loop.skip_identity(c.x) == loop.skip_identity(order[-1].new_h)]
        if len(following) != 1:
            raise NotACell("the cells do not form one stack")
        order.append(following[0])
    return order


def _outer_users(loop: Loop, name: str, op: str) -> list[Any]:
    """Outer nodes of type ``op`` reading ``name`` directly or through Identity nodes."""
    found = []
    for node in loop.outer_graph.values():
        if name in data_inputs(node):
            if node.op in ("Identity", "Snapshot"):
                found += _outer_users(loop, f"{node.name}:0", op)
            elif node.op == op:
                found.append(node)
    return found


def _input(loop: Loop, step: str) -> tuple[str, LoopVar | None]:
    """The outer time-major tensor whose slices the loop reads as ``step``; and the list variable (v2)."""
    reader = loop.node(loop.skip_identity(step))
    if reader is not None and reader.op == "TensorListGetItem":
        inside = loop.skip_identity(data_inputs(reader)[0])
        var = next((v for v in loop.variables if v.inside == inside), None)
        source = loop.outer_graph.get(node_of(var.init)) if var is not None else None
        if source is not None and source.op == "TensorListFromTensor":
            return data_inputs(source)[0], var
    if reader is not None and reader.op == "TensorArrayReadV3":
        handle = loop.outer(data_inputs(reader)[0])
        scatters = [n for n in loop.outer_graph.values()
                    if n.op == "TensorArrayScatterV3" and handle is not None and data_inputs(n)[0] == handle]
        if len(scatters) == 1:
            return data_inputs(scatters[0])[2], None
    raise NotACell("the first cell does not read the loop's input list")


def _copied(loop: Loop, value: str, lengths: list[str]) -> tuple[str, str | None]:
    """Through ``where(time >= lengths, old, new)``: (new, old); records the outer lengths."""
    value = loop.skip_identity(value)
    node = loop.node(value)
    if node is None or node.op not in _SELECT:
        return value, None
    condition, old, new = data_inputs(node)
    compare = loop.node(loop.skip_identity(condition))
    outer = compare is not None and compare.op == "GreaterEqual" and loop.outer(data_inputs(compare)[1])
    if not outer:
        raise NotACell(f"{node.name} selects on something other than time >= sequence_length")
    lengths.append(outer)
    return loop.skip_identity(new), loop.skip_identity(old)


def _counter(loop: Loop, var: LoopVar) -> bool:
    """A loop variable that only counts (next = inside + constant) or never changes."""
    step = loop.node(loop.skip_identity(var.next))
    if loop.skip_identity(var.next) == loop.skip_identity(var.inside):
        return True
    return step is not None and step.op in ("Add", "AddV2") and any(
        loop.skip_identity(name) == loop.skip_identity(var.inside) for name in data_inputs(step)) and any(
        loop.constant(name) is not None for name in data_inputs(step))


def unrolled(graph_def: Any) -> list[str]:
    """Cells computed outside any loop, step after step (static_rnn): their layers."""
    return sorted({cell.layer for cell in find_cells(top_level(graph_def), lenient=True)})


def _bookkeeping(loop: Loop, var: LoopVar) -> bool:
    """What gradients add to a v2 loop (accumulator lists): read by nothing but its own next value and
    unused after the loop once the graph is pruned to the model's outputs."""
    step = loop.node(loop.skip_identity(var.next))
    users = loop.users(var.inside)
    if step is None or any(user is not step for user in users):
        return False
    return var.final is None or not any(var.final in data_inputs(node) for node in loop.outer_graph.values())


def read(loop: Loop) -> Recurrence | None:
    """The loop as a stack of cells, or None when it is not one (UnsupportedLayerError for a cell ONNX lacks)."""
    try:
        cells = find_cells(loop)
        if not cells:
            return None
        cells = _ordered(loop, cells)
        x, input_var = _input(loop, cells[0].x)
        found = Recurrence(loop, cells, x)
        lengths: list[str] = []
        roles = {}
        for k, cell in enumerate(cells):
            roles[loop.skip_identity(cell.h_prev)] = (k, "h", loop.skip_identity(cell.new_h))
            if cell.c_prev is not None and cell.new_c is not None:
                roles[loop.skip_identity(cell.c_prev)] = (k, "c", loop.skip_identity(cell.new_c))
        last = loop.skip_identity(cells[-1].new_h)
        for var in loop.variables:
            inside = loop.skip_identity(var.inside)
            if var is input_var or var.inside in loop.invariants:
                continue
            if inside in roles:
                k, role, new = roles.pop(inside)
                value, old = _copied(loop, var.next, lengths)
                if value != new or old not in (None, inside):
                    raise NotACell(f"state {role} of {cells[k].layer} is not carried to the next step")
                found.states.append(State(k, role, var.init, var.final))
                continue
            writer = loop.node(loop.skip_identity(var.next))
            if writer is not None and writer.op in ("TensorListSetItem", "TensorArrayWriteV3"):
                if _copied(loop, data_inputs(writer)[2], lengths)[0] != last:
                    raise NotACell(f"the loop writes something other than {cells[-1].layer}'s output")
                if var.final is not None:
                    op = "TensorListStack" if writer.op == "TensorListSetItem" else "TensorArrayGatherV3"
                    stacks = _outer_users(loop, var.final, op)
                    if len(stacks) > 1:
                        raise NotACell("the output list is read more than once")
                    found.output = f"{stacks[0].name}:0" if stacks else None
                continue
            if not _counter(loop, var) and not _bookkeeping(loop, var):
                raise NotACell(f"loop variable {var.inside} is neither a cell state nor a counter")
        if roles or len(set(lengths)) > 1:
            raise NotACell("a cell state is not a loop variable, or the lengths differ")
        found.lengths = lengths[0] if lengths else None
        return found
    except NotACell:
        return None
