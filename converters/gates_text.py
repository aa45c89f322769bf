"""``modelbridge gates --format text``: the per-gate split of every recurrent node, for people.

Per node: its attributes, where the converter took it from, how the graph wires it (what feeds X,
sequence_lens and the initial states; which graph outputs Y, Y_h, Y_c become), then per direction
and gate the rows of the fused W, R, B it occupies, the source gate and variables they came from,
and the matrices themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}


def _names(items: list[str]) -> str:
    return ", ".join(repr(item) for item in items)


def describe_input(record: dict[str, Any] | None) -> str:
    """One line for what feeds a node input (a wiring record of converters.wiring)."""
    if record is None:
        return "none"
    kind = record["kind"]
    if kind == "graph_input":
        return f"model input {record['tensor']!r}"
    if kind == "zeros":
        sized = f", sized from model input {_names(record['shape_from'])}" if record["shape_from"] else ""
        return f"zeros ({record['tensor']!r}{sized})"
    if kind == "constant":
        value = f" = {record['value']}" if "value" in record else ""
        return f"constant {record['tensor']!r}{value}"
    text = f"{record['tensor']!r}, computed from model input {_names(record['graph_inputs'])}"
    if record["via"]:
        text += f" via {', '.join(record['via'])}"
    if record["recurrent_nodes"]:
        text += f" (output of recurrent node {_names(record['recurrent_nodes'])})"
    return text


def describe_output(record: dict[str, Any] | None) -> str:
    """One line for where a node output goes."""
    if record is None:
        return "not produced"
    parts = []
    if record["graph_outputs"]:
        via = f" via {', '.join(record['via'])}" if record["via"] else ""
        parts.append(f"graph output {_names(record['graph_outputs'])}{via}")
    if record["consumers"]:
        parts.append(f"read by node {_names(record['consumers'])}")
    return f"{record['tensor']!r} -> " + ("; ".join(parts) if parts else "not used")


def _span(rows: list[int]) -> str:
    return f"{rows[0]}:{rows[1]}"


def _gate_lines(node: dict[str, Any], index: int, split: dict[str, Any]) -> list[str]:
    source = node["source"] or {}
    order = source.get("gate_order") or []
    variables = source.get("variables") or {}
    hidden = node["hidden_size"]
    direction = split["direction"]
    lines = []
    mine = {role: name for role, name in variables.items() if role.startswith(f"{direction}.")}
    if source:
        shown = mine or {role: name for role, name in variables.items() if "." not in role}
        if shown:
            lines.append(f"  [{direction}] source variables: "
                         + ", ".join(f"{role.split('.', 1)[-1]}={name}" for role, name in shown.items()))
    for gate, parts in split["gates"].items():
        rows = split["rows"][gate]
        where = (f"W[{index}, {_span(rows['W'])}] R[{index}, {_span(rows['R'])}] "
                 f"Wb=B[{index}, {_span(rows['Wb'])}] Rb=B[{index}, {_span(rows['Rb'])}]")
        origin = ""
        source_gate = parts["source_gate"]
        if source_gate is not None and source_gate in order:
            k = order.index(source_gate)
            origin = f" <- {_ORDINAL.get(k + 1, f'{k + 1}th')} source gate of {', '.join(order)}"
            # Per-direction roles name row-stacked variables (e.g. PyTorch weight_ih_l0): give their rows.
            sliced = [f"{role.split('.', 1)[1]} = {name}[{k * hidden}:{(k + 1) * hidden}]"
                      for role, name in mine.items() if role.split(".", 1)[1] in ("W", "R", "Wb", "Rb")]
            if sliced:
                origin += ": " + ", ".join(sliced)
        lines.append(f"  [{direction}] gate {gate} (source gate {source_gate}): {where}{origin}")
        for part in ("W", "R", "Wb", "Rb"):
            text = np.array2string(parts[part]).replace("\n", "\n      ")
            lines.append(f"    {part} {list(parts[part].shape)}:\n      {text}")
    for gate, vector in split.get("peepholes", {}).items():
        lines.append(f"  [{direction}] peephole {gate}: {np.array2string(vector)}")
    return lines


def to_text(document: dict[str, Any]) -> str:
    """Render ``converters.gates.split_gates_arrays(model)``."""
    lines = []
    with np.printoptions(precision=6, suppress=True, linewidth=120, threshold=1_000_000):
        for node in document["nodes"]:
            source = node["source"] or {}
            lines.append(
                f"{node['node']}: {node['op']} hidden_size={node['hidden_size']} input_size={node['input_size']} "
                f"direction={node['direction']} layout={node['layout']} activations={node['activations']} "
                f"clip={node['clip']}"
                + (f" linear_before_reset={node['linear_before_reset']}" if "linear_before_reset" in node else "")
            )
            if source:
                lines.append(
                    f"  source: {source.get('framework')} layer {source.get('layer')!r}, gate order "
                    f"{source.get('gate_order')}, folded {source.get('folded')}"
                )
            else:
                lines.append("  source: not annotated")
            told = source.get("wiring") or {}
            for slot, record in node["wiring"].items():
                axes = node["axes"].get(slot)
                shape = f" [{', '.join(axes)}]" if axes else ""
                text = describe_output(record) if slot.startswith("Y") else describe_input(record)
                said = f"  (converter: {told[slot]})" if slot in told else ""
                lines.append(f"  {slot}{shape}: {text}{said}")
            for index, split in enumerate(node["directions"]):
                lines.extend(_gate_lines(node, index, split))
    return "\n".join(lines) + "\n"
