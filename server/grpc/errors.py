"""The one mapping from the core's error kinds to gRPC status codes, applied to every rpc.

`rpc_errors` wraps a servicer method (unary or streaming): a ModelBridgeError ends the call with
the status of its kind and its own message; anything unexpected is logged with its traceback and
ends the call as INTERNAL, so no rpc ever fails with gRPC's bare UNKNOWN.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from server.core.errors import ErrorKind, ModelBridgeError

log = logging.getLogger("modelbridge.grpc")

STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

F = TypeVar("F", bound=Callable[..., Any])


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and message for an exception raised while serving an rpc."""
    if isinstance(exc, ModelBridgeError):
        return STATUS[exc.kind], exc.message
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {str(exc)[:300]}"


async def _abort(context: grpc.aio.ServicerContext, name: str, exc: Exception) -> None:
    code, message = status_of(exc)
    if not isinstance(exc, ModelBridgeError):
        log.exception("rpc %s failed unexpectedly", name)
    elif exc.retry_after is not None:
        context.set_trailing_metadata((("retry-after", str(int(exc.retry_after + 0.999))),))
    await context.abort(code, message)


def rpc_errors(method: F) -> F:
    """Decorate a grpc.aio servicer method so every failure leaves with the mapped status."""
    name = method.__name__
    # AbortError is how context.abort() unwinds; cancellation must pass through untouched.
    passthrough = (grpc.aio.AbortError, asyncio.CancelledError)

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except passthrough:
                raise
            except Exception as exc:  # noqa: BLE001 - the boundary: anything unexpected becomes INTERNAL, logged
                await _abort(context, name, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except passthrough:
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary: anything unexpected becomes INTERNAL, logged
            await _abort(context, name, exc)

    return unary  # type: ignore[return-value]
