"""Guess the outputs of a TF1 graph that does not name them: its terminal nodes, minus the by-products."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import tensorflow as tf

from converters import UnsupportedSourceError

# Nodes that are bookkeeping, not model outputs, when guessing a graph's outputs.
_NOT_OUTPUTS = {"NoOp", "Assign", "AssignVariableOp", "SaveV2", "RestoreV2", "SaveSlices", "VariableV2",
                "VarHandleOp", "Const", "Placeholder", "PlaceholderWithDefault", "VarIsInitializedOp",
                "IsVariableInitialized", "MergeSummary", "ScalarSummary", "HistogramSummary"}
_BOOKKEEPING = re.compile(r"^(save(_\d+)?|gradients(_\d+)?|train|init|report_uninitialized|.*Adam|"
                          r".*GradientDescent|.*Momentum|.*RMSProp)(/|$)")


def plain(name: str) -> str:
    return re.sub(r":\d+$", "", name)


def _is_weight(node: Any) -> bool:
    if node.op not in ("Const", "VariableV2", "VarHandleOp"):
        return False
    if node.op != "Const":
        return True
    dims = node.attr["value"].tensor.tensor_shape.dim
    return node.attr["dtype"].type == tf.float32.as_datatype_enum and int(np.prod([d.size for d in dims])) > 1


def guess_outputs(graph_def: Any) -> list[str]:
    """Terminal nodes that compute from an input and are not a by-product of a bigger output.

    dynamic_rnn leaves unconsumed final states (loop Exit nodes), zero-state constants and a saver
    behind; an output whose ancestors all feed another output is such a by-product.
    """
    relevant = {node.name: node for node in graph_def.node if not _BOOKKEEPING.match(node.name)}
    parents = {name: [re.sub(r"^\^", "", plain(inp)) for inp in node.input] for name, node in relevant.items()}
    consumed = {parent for names in parents.values() for parent in names}
    ancestry: dict[str, frozenset[str]] = {}

    def ancestors(name: str) -> frozenset[str]:
        stack, seen = [name], set()
        while stack:
            for parent in parents.get(stack.pop(), []):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return frozenset(seen)

    for name, node in relevant.items():
        if name in consumed or node.op in _NOT_OUTPUTS or node.op == "Exit" \
                or node.op.startswith(("Apply", "ResourceApply")):
            continue
        every = [p for p in ancestors(name) if p in relevant]
        # An output computes from an input AND from weights (zero states and shape helpers do not).
        if any(relevant[p].op == "Placeholder" for p in every) and any(_is_weight(relevant[p]) for p in every):
            ancestry[name] = frozenset(p for p in every if relevant[p].op != "Const")
    training = any(node.name.startswith("gradients") for node in graph_def.node)
    identities = [name for name in ancestry if _named_output(relevant[name], relevant)]
    if identities and not training:
        # Named outputs (tf.identity in TF1 code, Identity per output of a frozen tf.function) are all kept,
        # even one whose ancestry another covers (a sequence and its final state).
        return identities
    outputs = [name for name, found in ancestry.items()
               if not any(found < other for key, other in ancestry.items() if key != name)]
    if training:
        outputs = _predictions(outputs, relevant, parents, ancestors) or outputs
    named = [name for name in outputs if relevant[name].op == "Identity"]
    outputs = named or outputs  # tf.identity(..., name=...) is how TF1 code names its outputs
    if not outputs:
        raise UnsupportedSourceError("cannot tell the outputs of this TensorFlow graph; name them (outputs=[...])")
    return outputs


def _named_output(node: Any, nodes: dict[str, Any]) -> bool:
    """An Identity that names a value, not one of the Identity nodes a v2 While puts on each of its outputs."""
    if node.op != "Identity" or node.attr["T"].type in (tf.variant.as_datatype_enum, tf.resource.as_datatype_enum):
        return False
    source = nodes.get(plain(node.input[0]).lstrip("^")) if node.input else None
    return source is None or source.op not in ("While", "StatelessWhile")


def _predictions(losses: list[str], relevant: dict[str, Any], parents: dict[str, list[str]],
                 ancestors: Any) -> list[str]:
    """In a saved training graph the terminal node is the loss: take what it compares with the labels.

    That is the last weight-dependent node before a node that also reads another placeholder (the
    targets): ``prediction`` in ``loss = mean((prediction - target)**2)``.
    """
    found = []
    for loss in losses:
        nodes = [n for n in ancestors(loss) if n in relevant] + [loss]
        lineage = {n: {p for p in ancestors(n) if p in relevant} | {n} for n in nodes}
        feeds = {n: {p for p in lineage[n] if relevant[p].op == "Placeholder"} for n in nodes}
        weighted = {n: any(_is_weight(relevant[p]) for p in lineage[n]) for n in nodes}
        for node in nodes:
            if relevant[node].op in ("Const", "Placeholder") or not weighted[node] or not feeds[node]:
                continue
            consumers = [c for c in nodes if node in parents.get(c, [])]
            if any(feeds[c] > feeds[node] for c in consumers) and node not in found:
                found.append(node)
    return found


