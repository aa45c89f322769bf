"""Build and start the gRPC port: the inference service, grpc.health.v1 and reflection.

Two engines serve the same servicer objects: "h2" (default) is front.py on our HTTP/2 layer (http2.py, on
the h2 library's state machine), "grpcio" is grpcio's asyncio server, kept as the reference implementation
and a fallback."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from server.core.auth import KeyRing
from server.core.errors import Unavailable
from server.core.service import InferenceService
from server.grpc._generated import POOL
from server.grpc._generated import grpc_service_pb2 as pb
from server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from server.grpc.auth import AuthInterceptor
from server.grpc.front import GrpcFront, Registry
from server.grpc.servicer import InferenceServicer

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class ReadinessHealth(health.aio.HealthServicer):
    """grpc.health.v1: SERVING while the core is ready, NOT_SERVING otherwise (e.g. shutting down).

    The status is read from the core on every Check, so it cannot go stale."""

    def __init__(self, service: InferenceService) -> None:
        super().__init__()
        self.service = service

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = (
            health_pb2.HealthCheckResponse.SERVING if self.service.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", INFERENCE_SERVICE):
            await self.set(name, status)
        return await super().Check(request, context)


def _register_health_descriptor() -> None:
    # Reflection answers from our private descriptor pool; give it the health file as well.
    try:
        POOL.FindFileByName(health_pb2.DESCRIPTOR.name)
    except KeyError:
        POOL.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)


ENGINES = ("h2", "grpcio")
SERVICE_NAMES = (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)


def _register(service: InferenceService, server: grpc.aio.Server | Registry) -> None:
    """The three services on either engine (a Registry collects them as a grpc server would)."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    health_pb2_grpc.add_HealthServicer_to_server(ReadinessHealth(service), server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(SERVICE_NAMES, pool=POOL), server)


async def start_grpc_server(
    service: InferenceService, *, host: str, port: int, max_message_bytes: int, reuse_port: bool = False,
    keys: KeyRing | None = None, max_concurrent_rpcs: int = 0, engine: str = "h2", body_timeout: float = 60.0,
) -> grpc.aio.Server | GrpcFront:
    """Bind host:port and start serving; the caller stops it with `await server.stop(grace)`."""
    # No keys given (in-process tests): the default KeyRing, i.e. inference open, administration refused.
    keys = keys if keys is not None else KeyRing()
    _register_health_descriptor()
    if engine == "grpcio":
        return await _start_grpcio(service, host=host, port=port, max_message_bytes=max_message_bytes,
                                   reuse_port=reuse_port, keys=keys, max_concurrent_rpcs=max_concurrent_rpcs)
    if engine != "h2":
        raise ValueError(f"unknown gRPC engine {engine!r}: one of {', '.join(ENGINES)}")
    registry = Registry()
    _register(service, registry)
    front = GrpcFront(registry, keys=keys, max_message_bytes=max_message_bytes,
                      max_concurrent_rpcs=max_concurrent_rpcs, idle_body_timeout=body_timeout)
    await front.start(host, port, reuse_port=reuse_port)
    return front


async def _start_grpcio(
    service: InferenceService, *, host: str, port: int, max_message_bytes: int, reuse_port: bool,
    keys: KeyRing, max_concurrent_rpcs: int,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Off, so a port already taken is an error; on for --workers, where every worker binds it.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        interceptors=[AuthInterceptor(keys)],
        maximum_concurrent_rpcs=max_concurrent_rpcs or None,
    )
    _register(service, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise Unavailable(f"gRPC cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise Unavailable(f"gRPC cannot listen on {address}")
    await server.start()
    return server
