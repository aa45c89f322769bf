"""The REST port's HTTP/1.1 server: asyncio.Protocol + httptools, inference answered without ASGI.

Measured on this project's 2-core machine (CPU per request of the server process, a handler that
answers at once): uvicorn with httptools ~100 µs, this server ~45 µs, a bare protocol that only
parses and answers ~30 µs. POST .../infer goes straight to the inference handler (bytes in, bytes
out, see fastpath.infer_handler); every other request goes to the ASGI app (asgi_bridge). Keep-alive, pipelining, chunked bodies, Expect: 100-continue, HTTP/1.0, body and
header limits, header/body/keep-alive timeouts, backpressure and graceful shutdown are handled per
connection in http_connection.py; what the request line and headers must be (RFC 9112: target forms,
Host, versions) is checked there when the headers are complete, and so are refusals that need no body
(the `gate`, admission.py), before any body byte is read.

llhttp (through httptools) stays the parser rather than h11: parsing a small POST costs ~0.7 µs with
httptools and ~45 µs with h11, as much as this server's whole per-request budget. What h11 adds
(Host rules, a header-size bound, target forms, trailers kept apart) is done on top of llhttp here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from server.rest.fastpath import InferHandler, parse_infer_path
from server.rest.http_connection import HttpConnection
from server.rest.http_wire import Answer, Headers, Target, parse_target, valid_host

log = logging.getLogger("modelbridge.rest")

ASGIApp = Callable[..., Awaitable[None]]
INF = math.inf
ROUTE_CACHE_SIZE = 4096


class Gate(Protocol):
    """Refusals decided from a request's head (admission.Admission)."""

    # True when an inference request (POST .../infer) is never refused from its head (inference needs no
    # key): the gate is then not asked for those, the one route that carries load.
    inference_open: bool

    def __call__(self, method: bytes, path: str, headers: Headers) -> Answer | None:
        """None, or the answer refusing the request before its body is read."""

# A request target as parsed once per distinct URL: (raw path, query, path), the authority of an
# absolute-form target, and (model, version) when a POST there is an inference request.
Route = tuple[Target, bytes | None, tuple[str, str] | None]

__all__ = ["HttpConnection", "HttpServer"]


class HttpServer:
    def __init__(self, app: ASGIApp, *, infer: InferHandler | None, max_body_bytes: int, gate: Gate | None = None,
                 header_timeout: float = 10.0, body_timeout: float = 60.0, keepalive_timeout: float = 5.0,
                 max_pipelined: int = 64, max_concurrency: int = 0) -> None:
        self.app = app
        self.infer = infer
        self.gate = gate
        self.max_body_bytes = max_body_bytes
        # 0 disables a timeout, as in Settings
        self.header_timeout = header_timeout or INF
        self.body_timeout = body_timeout or INF
        self.keepalive_timeout = keepalive_timeout or INF
        self.max_pipelined = max(1, max_pipelined)
        # Connections open and requests being answered, each at most this many, else 503 (as uvicorn's
        # limit_concurrency, which this server replaces); 0: unbounded.
        self.max_concurrency = max_concurrency
        self.active = 0
        self.connections: set[HttpConnection] = set()
        self.workers: set[asyncio.Task[None]] = set()   # one per connection that has had a request
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._all_closed: asyncio.Event | None = None
        self.routes: dict[bytes, Route] = {}   # see route()
        self.hosts: set[bytes] = set()          # see host_ok()

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self._all_closed = asyncio.Event()
        factory = lambda: HttpConnection(self)
        if sock is not None:
            self._server = await self.loop.create_server(factory, sock=sock, backlog=2048)
        else:
            self._server = await self.loop.create_server(factory, host, port, backlog=2048, reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, let requests in flight finish for up to `grace` s."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.start_drain()
        if self.connections and self._all_closed is not None:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except TimeoutError:
                log.warning("shutdown: %d connection(s) still busy after %ss; closing them", len(self.connections), grace)
        for conn in list(self.connections):
            conn.abort()
        # Let every connection's worker see its connection gone; one stuck in the app is cancelled.
        if self.workers:
            _, stuck = await asyncio.wait(list(self.workers), timeout=1.0)
            for task in stuck:
                task.cancel()

    def over_limit(self) -> bool:
        """Whether a request arriving now is refused: too many other connections or requests in progress."""
        return self.active >= self.max_concurrency or len(self.connections) > self.max_concurrency

    def route(self, method: bytes, url: bytes) -> Route | None:
        """The parsed request target, None when it is not acceptable (http_wire.parse_target). Clients
        repeat the same few URLs, so the answer is remembered per URL."""
        try:
            return self.routes[url]
        except KeyError:
            pass
        parsed = parse_target(method, url)
        if parsed is None:
            return None
        target, authority = parsed
        route = (target, authority, parse_infer_path(target[2]) if self.infer is not None else None)
        if url != b"*":   # the one target whose acceptability depends on the method
            if len(self.routes) >= ROUTE_CACHE_SIZE:
                self.routes.clear()
            self.routes[url] = route
        return route

    def host_ok(self, value: bytes) -> bool:
        """Whether a Host value is a valid host[:port]; clients send the same few, so a valid one is
        remembered (a set lookup costs a tenth of the match)."""
        if value in self.hosts:
            return True
        if not valid_host(value):
            return False
        if len(self.hosts) >= ROUTE_CACHE_SIZE:
            self.hosts.clear()
        self.hosts.add(value)
        return True

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections and self._all_closed is not None:
            self._all_closed.set()
