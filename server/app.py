"""Composition root: settings -> repository -> service -> REST + gRPC + metrics, on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import math
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from server import metrics
from server.core import auth, sandbox
from server.core.auth import KeyRing
from server.core.errors import ModelBridgeError
from server.core.poller import RepositoryPoller
from server.core.repository import ModelRepository, bundled_repository, default_repository
from server.core.sequences import SequenceStore
from server.core.service import InferenceService
from server.rest.admission import Admission, route_table
from server.rest.app import create_app
from server.rest.fastpath import infer_handler, secure_infer
from server.rest.http11 import HttpServer
from server.rest.security import guarded_http_protocol, parse_origins, secure_app
from server.settings import Settings

log = logging.getLogger("modelbridge")


def with_repository(settings: Settings) -> Settings:
    """Settings with the repository resolved (the default one created on first start), said in the log."""
    if settings.model_repository:
        root, how = Path(settings.model_repository).resolve(), "--model-repository"
    else:
        root, how = default_repository()
    ModelRepository(root)   # exists and is readable, before the log says models live there
    if root == bundled_repository().resolve():
        how += "; read-only: uploads and loads with a config are refused"
    log.info("models live in %s (%s)", root, how)
    return dataclasses.replace(settings, model_repository=str(root))


def build_service(settings: Settings) -> InferenceService:
    root = Path(settings.model_repository) if settings.model_repository else bundled_repository()
    sequences = SequenceStore(idle_timeout=settings.sequence_idle_secs, max_sequences=settings.max_sequences)
    read_only = root.resolve() == bundled_repository().resolve()   # never write into the package
    service = InferenceService(ModelRepository(root, read_only=read_only), sequences=sequences)
    service.model_control_mode = settings.model_control_mode
    service.sandbox_limits = sandbox.Limits(timeout_secs=settings.model_check_timeout_secs,
                                            memory_bytes=settings.model_check_memory_mb << 20,
                                            max_model_bytes=settings.max_body_bytes)
    service.max_pending_per_model = settings.max_pending_per_model
    return service


def build_keyring(settings: Settings) -> KeyRing:
    return auth.build_keyring(
        admin_keys=settings.admin_keys, inference_keys=settings.inference_keys, keys_file=settings.keys_file,
        allow_unauthenticated_admin=settings.allow_unauthenticated_admin,
        require_inference_key=settings.require_inference_key,
    )


def metrics_app(service: InferenceService) -> Starlette:
    async def endpoint(_: Request) -> PlainTextResponse:
        return PlainTextResponse(metrics.render(service), media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/metrics", endpoint)])


class _Server(uvicorn.Server):
    # Signals are handled once for all servers by `serve` below.
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _uvicorn(app: Any, host: str, port: int, settings: Settings) -> _Server:
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
        loop="none", timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_secs),
        http=guarded_http_protocol(settings.header_timeout_secs) if settings.header_timeout_secs > 0 else "httptools",
        limit_concurrency=settings.max_concurrent_requests or None,
    )
    return _Server(config)


class CannotStart(Exception):
    """The server cannot start for a reason outside its settings (a port in use): one line for the user."""


@contextlib.contextmanager
def _binding(what: str, host: str, port: int) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise CannotStart(f"cannot serve {what} on {_addr(host, port)}: {reason}") from None
    except RuntimeError as exc:  # grpcio's engine reports a failed bind so
        raise CannotStart(f"cannot serve {what} on {_addr(host, port)}: {exc}") from None


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def serve(settings: Settings, *, reuse_port: bool = False) -> None:
    keys = build_keyring(settings)   # a bad key setting stops the server before it binds anything
    service = build_service(settings)
    poller = None
    if settings.model_control_mode == "poll":
        poller = RepositoryPoller(service, interval=settings.repository_poll_secs)
        poller.baseline()
    await asyncio.to_thread(service.start)
    log.info("models: %s", [e["name"] + "/" + e["version"] for e in service.repository_index(ready_only=True)])
    origins = parse_origins(settings.cors_origins)
    fastapi_app = create_app(service, max_body_bytes=settings.max_body_bytes)
    api = secure_app(fastapi_app, keys, cors_origins=origins,
                     body_timeout_secs=0)   # HttpServer enforces the body deadline itself
    gate = Admission(keys, cors_origins=origins, routes=route_table(fastapi_app.router.routes))
    rest_server = HttpServer(api, infer=secure_infer(infer_handler(service), keys, cors_origins=origins), gate=gate,
                             max_body_bytes=settings.max_body_bytes, header_timeout=settings.header_timeout_secs,
                             body_timeout=settings.body_timeout_secs, max_concurrency=settings.max_concurrent_requests)
    rest_sock = None
    with _binding("REST", settings.host, settings.http_port):
        if reuse_port:  # --workers: every worker binds the same REST port
            from server.workers import reuseport_socket

            rest_sock = reuseport_socket(settings.host, settings.http_port)
        await rest_server.start(settings.host, settings.http_port, sock=rest_sock)
    servers: list[tuple[_Server, socket.socket]] = []   # uvicorn for metrics only
    if settings.metrics_port:
        with _binding("metrics", settings.host, settings.metrics_port):
            # Bound here rather than by uvicorn, whose bind failure is a logged sys.exit inside a task.
            metrics_sock = socket.create_server((settings.host, settings.metrics_port), family=_family(settings.host))
        servers.append((_uvicorn(metrics_app(service), settings.host, settings.metrics_port, settings), metrics_sock))
    grpc_server = None
    grpc_where = "off"
    if settings.grpc_port:
        try:
            from server.grpc.server import start_grpc_server
        except ImportError as exc:  # the gRPC layer is optional until its stubs exist
            log.warning("gRPC disabled: %s", exc)
            grpc_where = "off (its stubs are missing)"
        else:
            with _binding("gRPC", settings.host, settings.grpc_port):
                grpc_server = await start_grpc_server(
                    service, host=settings.host, port=settings.grpc_port,
                    max_message_bytes=settings.grpc_message_limit, reuse_port=reuse_port, keys=keys,
                    max_concurrent_rpcs=settings.max_concurrent_requests, engine=settings.grpc_engine,
                    body_timeout=settings.body_timeout_secs,
                )
            grpc_where = "on " + _addr(settings.host, settings.grpc_port)
    stop = asyncio.Event()
    poll_task = asyncio.create_task(poller.run(stop)) if poller else None  # ends when `stop` is set
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, sock in servers]
    log.info("serving REST on %s, gRPC %s, metrics %s", _addr(settings.host, settings.http_port), grpc_where,
             "on " + _addr(settings.host, settings.metrics_port) if settings.metrics_port else "off")
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down: no new connections; draining in-flight requests (up to %ss)",
             settings.shutdown_grace_secs)
    for task in done:
        if task is not waiter and task.exception():
            log.error("a server failed: %s", task.exception())
    service.stop()
    for s, _sock in servers:
        s.should_exit = True
    stops = [rest_server.shutdown(settings.shutdown_grace_secs)]
    if grpc_server is not None:
        stops.append(grpc_server.stop(settings.shutdown_grace_secs))
    await asyncio.gather(*stops)
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()
    if poll_task is not None:
        await poll_task
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
    if failed:
        raise SystemExit(1)


def run(settings: Settings) -> None:
    build_keyring(settings)   # a bad key setting stops the server before it creates or reads anything
    settings = with_repository(settings)
    if settings.workers > 1:
        from server.workers import run_workers

        code = run_workers(settings)
        if code:
            raise SystemExit(code)
        return
    run_one(settings)


def run_one(settings: Settings, *, reuse_port: bool = False) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if not reuse_port:
        asyncio.run(serve(settings))
        return
    try:   # a worker process (--workers): its parent reports the exit status, so say why here in one line
        asyncio.run(serve(settings, reuse_port=True))
    except (CannotStart, ModelBridgeError) as exc:
        print(f"modelbridge worker {settings.worker_index}: {getattr(exc, 'message', exc)}", file=sys.stderr)
        raise SystemExit(2) from None
