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
        self._in_flight = 0

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
        if not self._queue or self._in_flight >= self.runtime.instances:
            return  # a finishing batch flushes again
        items = self._take()
        if self.runtime.offloaded:
            # The batch runs on a worker thread; meanwhile the loop keeps queueing the next one.
            self._in_flight += 1
            task = asyncio.ensure_future(self._run_offloaded(items))
            task.add_done_callback(self._batch_done)
        else:
            self._run(items)
            self._reschedule()

    def _reschedule(self) -> None:
        if self._queue and self._scheduled is None:
            loop = asyncio.get_running_loop()
            self._schedule(loop, now=self._queued_batch >= self.preferred or self.delay <= 0)

    def _batch_done(self, _task: asyncio.Future) -> None:
        self._in_flight -= 1
        self._reschedule()

    def _take(self) -> list[_Item]:
        """The oldest request and every queued request like it, up to max_batch_size, in order."""
        first = self._queue[0]
        taken: list[_Item] = []
        kept: deque[_Item] = deque()
        total = 0
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
        try:
            feeds = {k: np.concatenate([i.feeds[k] for i in live]) for k in live[0].feeds}
            t1 = time.perf_counter_ns()
            arrays = self.runtime.run(feeds, live[0].names)
            self._deliver(live, arrays, start, t1, time.perf_counter_ns())
        except (ModelBridgeError, ValueError):
            for item in live:
                self._execute_one(item, start)

    async def _run_offloaded(self, items: list[_Item]) -> None:
        start = time.perf_counter_ns()
        live = [i for i in items if not i.future.cancelled()]
        if not live:
            return
        try:
            feeds = {k: np.concatenate([i.feeds[k] for i in live]) for k in live[0].feeds}
            t1 = time.perf_counter_ns()
            arrays = await self.runtime.run_async(feeds, live[0].names)
            self._deliver(live, arrays, start, t1, time.perf_counter_ns())
        except (ModelBridgeError, ValueError):
            for item in live:
                if not item.future.done():
                    self._execute_one(item, start)

    def _deliver(self, live: list[_Item], arrays: list[np.ndarray], start: int, t1: int, t2: int) -> None:
        total = sum(i.batch for i in live)
        if any(a.ndim == 0 or a.shape[0] != total for a in arrays):
            raise ValueError("outputs are not batched along the first axis")
        offset = 0
        for item in live:
            part = [a[offset : offset + item.batch] for a in arrays]
            offset += item.batch
            if not item.future.done():
                item.future.set_result(BatchResult(part, start - item.enqueued_ns))
        t3 = time.perf_counter_ns()
        self.stats.record_execution(batch=total, input_ns=t1 - start, infer_ns=t2 - t1, output_ns=t3 - t2,
                                    requests=len(live))

    def _execute_one(self, item: _Item, start: int) -> None:
        t1 = time.perf_counter_ns()
        try:
            arrays = self.runtime.run(item.feeds, item.names)
        except ModelBridgeError as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        t2 = time.perf_counter_ns()
        self.stats.record_execution(batch=item.batch, input_ns=t1 - start, infer_ns=t2 - t1, output_ns=0)
        if not item.future.done():
            item.future.set_result(BatchResult(arrays, start - item.enqueued_ns))
