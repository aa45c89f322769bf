"""One onnxruntime session per loaded model version."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from server.core import datatypes
from server.core.errors import InternalError, InvalidArgument
from server.core.model_config import GraphIO


def _graph_io(args: list[Any]) -> list[GraphIO]:
    out = []
    for a in args:
        dt = datatypes.BY_ORT.get(a.type)
        if dt is None:
            raise InvalidArgument(f"tensor '{a.name}' has type {a.type}, which the V2 protocol cannot carry")
        shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (a.shape or [])]
        out.append(GraphIO(a.name, dt.v2, shape))
    return out


def session_options(params: dict[str, Any]) -> ort.SessionOptions:
    """Options from the config's `parameters` (Triton's onnxruntime backend uses the same keys)."""
    opts = ort.SessionOptions()
    # One thread per session by default: the server runs many small requests concurrently and
    # intra-op threads would fight over the same cores.
    opts.intra_op_num_threads = _int_param(params, "intra_op_thread_count", 1)
    opts.inter_op_num_threads = _int_param(params, "inter_op_thread_count", 1)
    opts.log_severity_level = 3
    return opts


def _int_param(params: dict[str, Any], key: str, default: int) -> int:
    v = params.get(key)
    if v is None:
        return default
    if isinstance(v, dict):
        v = v.get("string_value", default)
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InvalidArgument(f"parameter {key} must be an integer, got {v!r}") from None


# A model whose runs take longer than this (moving average) runs on a worker thread, so the event loop
# keeps reading, decoding and batching other requests meanwhile (onnxruntime releases the GIL). Shorter
# runs stay on the loop: a thread hand-off would cost more than the run itself.
OFFLOAD_NS = 400_000


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# A process allowed only one CPU (taskset, a one-core container) gains nothing from the worker thread:
# the loop and the run would take turns on that CPU, plus a hand-off each way. Measured on the 2×64
# LSTM batched 32 wide at c=32 on one pinned core: 3,318 sequences/s with the thread, 4,646 without.
OFFLOAD = _cpus() > 1


class ModelRuntime:
    def __init__(self, path: Path | bytes, params: dict[str, Any] | None = None, *, instances: int = 1) -> None:
        source = str(path) if isinstance(path, Path) else path
        try:
            self.session = ort.InferenceSession(
                source, session_options(params or {}), providers=["CPUExecutionProvider"]
            )
        except InvalidArgument:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for any bad model
            raise InvalidArgument(f"onnxruntime cannot load the model: {str(exc)[:500]}") from None
        self.inputs = _graph_io(self.session.get_inputs())
        self.outputs = _graph_io(self.session.get_outputs())
        self.output_names = [o.name for o in self.outputs]
        self.custom_metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        # The public run() re-validates feeds we have already checked and probes WebGPU graph capture on
        # every call; on a small model that is a sizeable share of the time, so call the binding directly.
        self._run = getattr(self.session, "_sess", None)
        self.instances = max(1, instances)
        self.avg_ns = 0.0
        self._pool: ThreadPoolExecutor | None = None

    @property
    def offloaded(self) -> bool:
        return OFFLOAD and self.avg_ns > OFFLOAD_NS

    def _observe(self, ns: int) -> None:
        self.avg_ns = ns if self.avg_ns == 0.0 else 0.9 * self.avg_ns + 0.1 * ns

    async def run_async(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> list[np.ndarray]:
        if not self.offloaded:
            return self.run(feeds, output_names)
        if self._pool is None:  # `instances` runs at once: the config's instance_group count
            self._pool = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix="onnxruntime")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.run, feeds, output_names)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> list[np.ndarray]:
        start = time.perf_counter_ns()
        try:
            if self._run is not None:
                out = self._run.run(output_names or self.output_names, feeds, None)
            else:
                out = self.session.run(output_names or self.output_names, feeds)
            self._observe(time.perf_counter_ns() - start)
            return out
        except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind errors share no base class but Exception
            msg = str(exc)
            # Shape/type problems that slipped past validation are the caller's fault.
            if "INVALID_ARGUMENT" in msg or "Invalid" in msg:
                raise InvalidArgument(f"onnxruntime rejected the inputs: {msg[:500]}") from None
            raise InternalError(f"onnxruntime failed: {msg[:500]}") from None
