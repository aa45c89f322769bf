"""What a conversion returns: the ONNX model, the proof that it matches its source, its annotations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converters.parity import ParityReport


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

    def save(self, path: str | Path) -> Path:
        """Write the model (annotations and parity report are inside its metadata_props)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(self.model, str(target))
        return target

    def op_types(self) -> list[str]:
        return [node.op_type for node in self.model.graph.node]
