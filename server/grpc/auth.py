"""gRPC access control: a grpc.aio server interceptor checking `authorization: Bearer <key>` metadata.

The same KeyRing and scopes as REST (server/core/auth.py). A refused call never reaches the servicer:
the interceptor answers it with UNAUTHENTICATED or PERMISSION_DENIED and reads no request message.
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


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        scope = scope_of(method)
        if scope is Scope.OPEN:
            return await continuation(handler_call_details)
        try:
            self.keys.check(scope, _authorization(handler_call_details.invocation_metadata))
        except ModelBridgeError as exc:
            return _refusal(STATUS[exc.kind], exc.message, streaming_request=method.endswith("/ModelStreamInfer"))
        return await continuation(handler_call_details)
