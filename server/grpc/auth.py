"""gRPC access control: a grpc.aio server interceptor checking `authorization: Bearer <key>` metadata.

The same KeyRing and scopes as REST (server/core/auth.py). A refused call never reaches the servicer:
the interceptor answers it with UNAUTHENTICATED or PERMISSION_DENIED and reads no request message.

The interceptor also guards deserialization: grpc answers a message protobuf cannot parse with UNKNOWN
(unary) or INTERNAL (streams) and logs a traceback; a corrupt message is the client's fault, so it
becomes INVALID_ARGUMENT here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.core.auth import KeyRing, Scope
from server.core.errors import ModelBridgeError
from server.grpc.errors import STATUS

SERVICE_PREFIX = "/inference.GRPCInferenceService/"
ADMIN_RPCS = frozenset({"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})
OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})


def scope_of(method: str) -> Scope:
    """Every rpc of the inference service needs at least inference scope, except the two probes;
    other services (grpc.health.v1, reflection) carry no model data and stay open."""
    if not method.startswith(SERVICE_PREFIX):
        return Scope.OPEN
    rpc = method[len(SERVICE_PREFIX):]
    if rpc in OPEN_RPCS:
        return Scope.OPEN
    if rpc in ADMIN_RPCS:
        return Scope.ADMIN
    return Scope.INFERENCE


def _authorization(metadata: Any) -> str | bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value
    return None


def _refusal(code: grpc.StatusCode, message: str, *, streaming_request: bool) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if streaming_request:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class _Corrupt:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and whatever else a parser raises
            return _Corrupt(str(exc)[:200])

    return parse


async def _refuse_corrupt(item: _Corrupt, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request message cannot be parsed: {item.reason}")


def guard_deserialization(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, with a corrupt request message answered INVALID_ARGUMENT."""
    if handler.request_deserializer is None:
        return handler
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Corrupt):
                await _refuse_corrupt(request, context)
            return await behaviour(request, context)

        return handler._replace(request_deserializer=_safe(handler.request_deserializer), unary_unary=unary)
    if handler.stream_stream is not None:
        stream_behaviour = handler.stream_stream

        async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async for item in requests:
                if isinstance(item, _Corrupt):
                    await _refuse_corrupt(item, context)
                yield item

        async def stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            # grpc.aio decides how to drive a behaviour from its kind: this one must be an async generator.
            async for response in stream_behaviour(checked(requests, context), context):
                yield response

        return handler._replace(request_deserializer=_safe(handler.request_deserializer), stream_stream=stream)
    return handler


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def _continue(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        cached = self._guarded.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = (handler, guard_deserialization(handler))
            self._guarded[details.method] = cached
        return cached[1]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        scope = scope_of(method)
        if scope is Scope.OPEN:
            return await self._continue(continuation, handler_call_details)
        try:
            self.keys.check(scope, _authorization(handler_call_details.invocation_metadata))
        except ModelBridgeError as exc:
            return _refusal(STATUS[exc.kind], exc.message, streaming_request=method.endswith("/ModelStreamInfer"))
        return await self._continue(continuation, handler_call_details)
