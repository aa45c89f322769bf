"""The one kind -> status mapping, and the decorator that applies it, on a real grpc.aio server."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest

from server.core import errors as core_errors
from server.core.errors import ErrorKind, ModelBridgeError
from server.grpc.errors import STATUS, rpc_errors, status_of


def test_every_kind_has_a_status_as_the_error_tree_documents() -> None:
    assert set(STATUS) == set(ErrorKind)
    # The table drawn in server/core/errors.py's docstring: "<Class> <KIND> <http> <GRPC_STATUS>".
    rows = re.findall(r"(\w+)\s+([A-Z_]+)\s+\d{3}\s+([A-Z_]+)", core_errors.__doc__ or "")
    assert len(rows) == len(ErrorKind)
    for cls_name, _, grpc_name in rows:
        cls = getattr(core_errors, cls_name)
        assert status_of(cls("m")) == (getattr(grpc.StatusCode, grpc_name), "m"), cls_name


def test_unexpected_exceptions_become_internal() -> None:
    code, message = status_of(ZeroDivisionError("division by zero"))
    assert code == grpc.StatusCode.INTERNAL
    assert message == "internal error: ZeroDivisionError: division by zero"


class _Failing:
    """Methods that raise what they are told to: the input to the decorator under test."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    @rpc_errors
    async def Unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise self.exc

    @rpc_errors
    async def Stream(self, request: bytes, context: grpc.aio.ServicerContext):
        yield b"first"
        raise self.exc


async def _call(exc: Exception) -> tuple[tuple[grpc.StatusCode, str], tuple[grpc.StatusCode, str], list[bytes]]:
    impl = _Failing(exc)
    handler = grpc.method_handlers_generic_handler("test.Failing", {
        "Unary": grpc.unary_unary_rpc_method_handler(impl.Unary),
        "Stream": grpc.unary_stream_rpc_method_handler(impl.Stream),
    })
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await channel.unary_unary("/test.Failing/Unary")(b"", timeout=10)
                raise AssertionError("no error")
            except grpc.aio.AioRpcError as err:
                unary = (err.code(), err.details())
            received: list[bytes] = []
            try:
                async for item in channel.unary_stream("/test.Failing/Stream")(b"", timeout=10):
                    received.append(item)
                raise AssertionError("no error")
            except grpc.aio.AioRpcError as err:
                stream = (err.code(), err.details())
    finally:
        await server.stop(None)
    return unary, stream, received


@pytest.mark.parametrize("exc, code", [
    (core_errors.NotFound("unknown model 'm'"), grpc.StatusCode.NOT_FOUND),
    (core_errors.InvalidArgument("input 'x': bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (core_errors.Unavailable("model 'm' is not ready"), grpc.StatusCode.UNAVAILABLE),
    (core_errors.ResourceExhausted("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (core_errors.PayloadTooLarge("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (core_errors.InternalError("broken"), grpc.StatusCode.INTERNAL),
    (RuntimeError("surprise"), grpc.StatusCode.INTERNAL),
])
def test_decorator_maps_unary_and_stream_failures(exc: Exception, code: grpc.StatusCode) -> None:
    unary, stream, received = asyncio.run(_call(exc))
    message = exc.message if isinstance(exc, ModelBridgeError) else "internal error: RuntimeError: surprise"
    assert unary == (code, message)
    assert stream == (code, message)
    assert received == [b"first"]   # what was sent before the failure still arrives
