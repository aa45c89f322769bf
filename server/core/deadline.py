"""Request deadlines: the V2 `timeout` parameter (microseconds), which gRPC deadlines also feed.

A request still queued (dynamic batcher, a sequence's previous step) when its time is up fails with
DeadlineExceeded and leaves the queue; one already running in onnxruntime finishes, as in Triton.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from server.core.errors import DeadlineExceeded, InvalidArgument

T = TypeVar("T")
PARAM = "timeout"
MAX_TIMEOUT_US = 10**12          # ~11.6 days: anything longer is "no timeout" in practice


def request_timeout(parameters: Mapping[str, Any]) -> float | None:
    """Seconds from the request's `timeout` parameter; None when absent or 0 (no timeout)."""
    value = parameters.get(PARAM)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"parameter 'timeout' must be a non-negative integer of microseconds, got {value!r}"[:200])
    if value == 0:
        return None
    return min(value, MAX_TIMEOUT_US) / 1e6


def merge(parameters: dict[str, Any], remaining_secs: float | None) -> None:
    """Fold a transport deadline (gRPC's time remaining) into the `timeout` parameter: the sooner wins."""
    if remaining_secs is None:
        return
    # A little before the transport's deadline, so the server answers with its own clear error rather
    # than racing the transport's cancellation of the call.
    us = max(1, int((remaining_secs - min(0.02, remaining_secs * 0.1)) * 1e6))
    given = parameters.get(PARAM)
    if isinstance(given, int) and not isinstance(given, bool) and 0 < given < us:
        return
    parameters[PARAM] = us


async def within(work: Awaitable[T], timeout: float, model: str) -> T:
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError:
        raise DeadlineExceeded(
            f"request to model '{model}' timed out after {timeout * 1e6:.0f} us (its 'timeout' parameter) "
            "before it could run"
        ) from None
