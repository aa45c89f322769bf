"""What a conversion returns: the ONNX model, the proof that it matches its source, its annotations.

Every converter's model passes through here, so this is the one place that stamps the IR version:
the lowest one that carries what the model holds (its opsets; node-level metadata_props, where our
annotations live, need IR 10).  onnx >= 1.23 would otherwise stamp IR 14, which onnxruntime-web 1.30
refuses (it loads up to IR 13 with opset 17); onnxruntime 1.32 loads both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converters.annotations import NODE_METADATA_IR_VERSION
from converters.parity import ParityReport


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def ir_version_for(model: onnx.ModelProto) -> int:
    """The lowest IR version that carries ``model``: its opsets, and node metadata_props if any."""
    version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    nodes = [node for graph in [model.graph] for node in _nodes(graph)]
    nodes += [node for function in model.functions for node in function.node]
    if any(node.metadata_props for node in nodes):
        version = max(version, NODE_METADATA_IR_VERSION)
    return int(version)


def stamp_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = ir_version_for(model)
    return model


@dataclass
class ConversionResult:
    model: onnx.ModelProto
    parity: ParityReport
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Converters annotate a node when they build it and may rewire the graph afterwards (the step
        # form's state inputs, a mask's scatter): re-derive the wiring so it describes the model as written.
        from converters.annotations import read_annotations, refresh_annotations

        if self.annotations or read_annotations(self.model):
            self.annotations = refresh_annotations(self.model) or self.annotations
        stamp_ir_version(self.model)

    def save(self, path: str | Path) -> Path:
        """Write the model (annotations and parity report are inside its metadata_props)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(stamp_ir_version(self.model), str(target))
        return target

    def op_types(self) -> list[str]:
        return [node.op_type for node in self.model.graph.node]
