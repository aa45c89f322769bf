"""A loaded model version and the per-model entry that holds its versions and state."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.core import datatypes
from server.core.batcher import DynamicBatcher
from server.core.errors import FailedPrecondition, InvalidArgument
from server.core.model_config import TensorSpec, tensor_specs
from server.core.runtime import ModelRuntime
from server.core.sequences import StatePair
from server.core.stats import ModelStats
from server.core.types import InferRequest

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"


class ModelVersion:
    """One version, loaded: its session, its validated interface, its statistics."""

    def __init__(
        self, name: str, version: int, path: Path, config: dict[str, Any], runtime: ModelRuntime,
        *, states: list[StatePair] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.config = config
        self.runtime = runtime
        self.states = states or []
        self.max_batch_size: int = config["max_batch_size"]
        self.inputs: dict[str, TensorSpec] = {s.name: s for s in tensor_specs(config, "input")}
        self.outputs: dict[str, TensorSpec] = {s.name: s for s in tensor_specs(config, "output")}
        self.required_inputs = [n for n, s in self.inputs.items() if not s.optional]
        self.stats = ModelStats()
        self.batcher: DynamicBatcher | None = None
        db = config.get("dynamic_batching") or (config.get("sequence_batching") or {}).get("oldest")
        if db is not None and self.max_batch_size > 0:
            self.batcher = DynamicBatcher(
                runtime, self.stats, max_batch_size=self.max_batch_size,
                preferred_batch_sizes=[int(p) for p in db.get("preferred_batch_size", [])],
                max_queue_delay_us=int(db.get("max_queue_delay_microseconds", 0)),
            )
        self.raw = path.read_bytes()
        self.etag = '"' + hashlib.sha256(self.raw).hexdigest() + '"'
        self.loaded_at = time.time()
        self._gates: dict[str, Any] | None = None
        self.metadata = {
            "name": name,
            "versions": [str(version)],
            "platform": config["platform"],
            "inputs": [s.metadata(self.max_batch_size) for s in self.inputs.values()],
            "outputs": [s.metadata(self.max_batch_size) for s in self.outputs.values()],
        }

    def prepare(self, req: InferRequest) -> tuple[dict[str, np.ndarray], list[str], int]:
        """Check the request against the model's interface; return feeds, outputs, batch size."""
        feeds: dict[str, np.ndarray] = {}
        batch = 1
        for t in req.inputs:
            spec = self.inputs.get(t.name)
            if spec is None:
                raise InvalidArgument(
                    f"unexpected input '{t.name}' for model '{self.name}'; it takes {sorted(self.inputs)}"
                )
            if t.name in feeds:
                raise InvalidArgument(f"input '{t.name}' is given more than once")
            if t.datatype != spec.datatype:
                raise InvalidArgument(
                    f"input '{t.name}': model '{self.name}' expects datatype {spec.datatype}, got {t.datatype}"
                )
            batch = self._check_shape(spec, t.shape)
            data = t.data
            if spec.datatype == "BYTES":
                # onnxruntime takes string tensors as Python str objects.
                data = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in data.reshape(-1)],
                                dtype=object).reshape(data.shape)
            feeds[t.name] = data
        missing = [n for n in self.required_inputs if n not in feeds]
        if missing:
            raise InvalidArgument(f"model '{self.name}' needs input(s) {missing}; the request is missing them")
        if req.outputs:
            names = []
            for o in req.outputs:
                if o.name not in self.outputs:
                    raise InvalidArgument(
                        f"unknown output '{o.name}' requested from model '{self.name}'; it has {sorted(self.outputs)}"
                    )
                names.append(o.name)
        else:
            names = list(self.outputs)
        if self.max_batch_size > 0 and len({int(a.shape[0]) for a in feeds.values()}) > 1:
            raise InvalidArgument("all inputs must have the same batch size (first dimension)")
        return feeds, names, batch

    def _check_shape(self, spec: TensorSpec, shape: tuple[int, ...]) -> int:
        dims = spec.dims
        batch = 1
        expected: list[int] = list(dims)
        if self.max_batch_size > 0:
            expected = [-1] + expected
            if len(shape) == len(expected):
                batch = shape[0]
                if batch < 1 or batch > self.max_batch_size:
                    raise InvalidArgument(
                        f"input '{spec.name}': batch size {batch} is outside 1..{self.max_batch_size} "
                        f"(max_batch_size of model '{self.name}')"
                    )
        if len(shape) != len(expected) or any(e != -1 and e != s for e, s in zip(expected, shape)):
            raise InvalidArgument(
                f"input '{spec.name}': model '{self.name}' expects shape {expected}, got {list(shape)}"
            )
        return batch

    def output_datatype(self, name: str, arr: np.ndarray) -> str:
        spec = self.outputs.get(name)
        return spec.datatype if spec else datatypes.from_numpy(arr.dtype).v2

    def gates(self) -> dict[str, Any]:
        if self._gates is None:
            import onnx

            from converters.gates import split_gates  # numpy + onnx only; no framework

            try:
                self._gates = split_gates(onnx.load_model_from_string(self.raw))
            except ValueError as exc:  # AnnotationError: e.g. weights computed at run time, not constants
                raise FailedPrecondition(f"model '{self.name}' has no per-gate form: {exc}") from None
        return self._gates


@dataclass
class ModelEntry:
    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    config: dict[str, Any] | None = None

    def latest(self) -> ModelVersion | None:
        return self.versions[max(self.versions)] if self.versions else None
