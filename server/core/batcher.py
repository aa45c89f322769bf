"""Dynamic batching as Triton configures it: `max_batch_size` and
`dynamic_batching { preferred_batch_size, max_queue_delay_microseconds }`.

Requests whose non-batch shapes, datatypes and requested outputs agree are concatenated along the
batch axis, run once, and split back in order. Requests reach the batcher already validated, so a bad
request fails before it can spoil a batch; should onnxruntime still fail on a batch, its requests are
retried one by one so that only the culprit fails.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.core.errors import ModelBridgeError, Unavailable
from server.core.runtime import ModelRuntime
from server.core.stats import ModelStats

Signature = tuple[Any, ...]


@dataclass(slots=True)
class _Item:
    feeds: dict[str, np.ndarray]
    names: list[str]
    batch: int
    signature: Signature
    future: asyncio.Future
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass(slots=True)
class BatchResult:
    arrays: list[np.ndarray]
    queue_ns: int


def signature(feeds: dict[str, np.ndarray], names: list[str]) -> Signature:
    return (tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(feeds.items())), tuple(names))


class DynamicBatcher:
    def __init__(
        self, runtime: ModelRuntime, stats: ModelStats, *, max_batch_size: int,
        preferred_batch_sizes: list[int] | None = None, max_queue_delay_us: int = 0, max_queue_size: int = 4096,
    ) -> None:
        self.runtime = runtime
        self.stats = stats
        self.max_batch_size = max_batch_size
        self.preferred = max([p for p in (preferred_batch_sizes or []) if p <= max_batch_size], default=max_batch_size)
        self.delay = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self._queue: deque[_Item] = deque()
        self._queued_batch = 0
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._queue)

    async def submit(self, feeds: dict[str, np.ndarray], names: list[str], batch: int) -> BatchResult:
        if len(self._queue) >= self.max_queue_size:
            raise Unavailable(f"the model's request queue is full ({self.max_queue_size} requests)", retry_after=1)
        loop = asyncio.get_running_loop()
        item = _Item(feeds, names, batch, signature(feeds, names), loop.create_future())
        self._queue.append(item)
        self._queued_batch += batch
        if self._queued_batch >= self.preferred:
            self._schedule(loop, now=True)
        elif self._scheduled is None:
            self._schedule(loop, now=self.delay <= 0)
        return await item.future

    def _schedule(self, loop: asyncio.AbstractEventLoop, *, now: bool) -> None:
        if self._scheduled is not None:
            if not now or not isinstance(self._scheduled, asyncio.TimerHandle):
                return
            self._scheduled.cancel()
        # call_soon runs after every request already read from the sockets has been queued,
        # so a burst becomes one batch even with no configured delay.
        self._scheduled = loop.call_soon(self._flush) if now else loop.call_later(self.delay, self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        if not self._queue:
            return
        items = self._take()
        self._run(items)
        if self._queue:
            loop = asyncio.get_running_loop()
            self._schedule(loop, now=self._queued_batch >= self.preferred or self.delay <= 0)

    def _take(self) -> list[_Item]:
        """The oldest request and every queued request like it, up to max_batch_size, in order."""
        first = self._queue[0]
        taken, kept, total = [], deque(), 0
        while self._queue:
            item = self._queue.popleft()
            if item.signature == first.signature and total + item.batch <= self.max_batch_size:
                taken.append(item)
                total += item.batch
            else:
                kept.append(item)
        self._queue = kept
        self._queued_batch -= total
        return taken

    def _run(self, items: list[_Item]) -> None:
        start = time.perf_counter_ns()
        live = [i for i in items if not i.future.cancelled()]
        if not live:
            return
        if len(live) == 1:
            self._execute_one(live[0], start)
            return
        names = live[0].names
        total = sum(i.batch for i in live)
        try:
            feeds = {k: np.concatenate([i.feeds[k] for i in live]) for k in live[0].feeds}
            t1 = time.perf_counter_ns()
            arrays = self.runtime.run(feeds, names)
            t2 = time.perf_counter_ns()
            if any(a.ndim == 0 or a.shape[0] != total for a in arrays):
                raise ValueError("outputs are not batched along the first axis")
        except (ModelBridgeError, ValueError):
            for item in live:
                self._execute_one(item, start)
            return
        offset = 0
        for item in live:
            part = [a[offset : offset + item.batch] for a in arrays]
            offset += item.batch
            item.future.set_result(BatchResult(part, start - item.enqueued_ns))
        t3 = time.perf_counter_ns()
        self.stats.record_execution(batch=total, input_ns=t1 - start, infer_ns=t2 - t1, output_ns=t3 - t2,
                                    requests=len(live))

    def _execute_one(self, item: _Item, start: int) -> None:
        t1 = time.perf_counter_ns()
        try:
            arrays = self.runtime.run(item.feeds, item.names)
        except ModelBridgeError as exc:
            item.future.set_exception(exc)
            return
        t2 = time.perf_counter_ns()
        self.stats.record_execution(batch=item.batch, input_ns=t1 - start, infer_ns=t2 - t1, output_ns=0)
        item.future.set_result(BatchResult(arrays, start - item.enqueued_ns))
