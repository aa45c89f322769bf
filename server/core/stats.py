"""Per model-version statistics in Triton's shape; the REST/gRPC statistics and /metrics read these."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStat:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ModelStats:
    """Counters for one loaded model version. Updated from the event loop and from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.durations = {k: Duration() for k in DURATIONS}
        self.batches: dict[int, BatchStat] = {}
        self.pending = 0

    def record_success(self, *, request_ns: int, queue_ns: int, batch: int) -> None:
        with self._lock:
            self.last_inference_ms = int(time.time() * 1000)
            self.inference_count += batch
            d = self.durations
            d["success"].add(request_ns)
            d["queue"].add(queue_ns)

    def record_failure(self, *, request_ns: int) -> None:
        with self._lock:
            self.durations["fail"].add(request_ns)

    def record_execution(self, *, batch: int, input_ns: int, infer_ns: int, output_ns: int, requests: int = 1) -> None:
        with self._lock:
            self.execution_count += 1
            d = self.durations
            d["compute_input"].add(input_ns, requests)
            d["compute_infer"].add(infer_ns, requests)
            d["compute_output"].add(output_ns, requests)
            b = self.batches.get(batch)
            if b is None:
                b = self.batches[batch] = BatchStat()
            b.compute_input.add(input_ns)
            b.compute_infer.add(infer_ns)
            b.compute_output.add(output_ns)

    def as_dict(self, name: str, version: int) -> dict[str, Any]:
        with self._lock:
            return {
                "name": name,
                "version": str(version),
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {k: v.as_dict() for k, v in self.durations.items()},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": b.compute_input.as_dict(),
                        "compute_infer": b.compute_infer.as_dict(),
                        "compute_output": b.compute_output.as_dict(),
                    }
                    for size, b in sorted(self.batches.items())
                ],
            }
