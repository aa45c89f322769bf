"""One client connection of the REST port's HTTP/1.1 server (http11.HttpServer): parsing, ordering,
limits, timeouts, and answering.

httptools calls back as bytes arrive; a request is queued once its headers are complete, and the
connection's one worker task answers the queue head, waiting for its body if needed, so pipelined
requests are answered strictly in order (the worker sleeps on a future while the queue is empty). POST .../infer goes straight to the inference
handler (bytes in, bytes out); everything else goes to the ASGI app through asgi_bridge.

When a request's headers are complete, its head is checked (_check_head: header size, version, CONNECT,
target, Host, Content-Length) and, if it announces a body, passed to the server's gate (admission.py):
a refusal is answered in the request's turn without reading the body and without `100 Continue`.
Chunked trailers are counted against the header limit and dropped.

Errors found while parsing (malformed input, size limits, timeouts) are queued like requests: they are
answered after the requests before them, then the connection closes. Timeouts use one lazily
re-armed timer: moving a deadline is an assignment, a timer is scheduled only when the new deadline
is earlier than the pending one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from typing import TYPE_CHECKING

import httptools

from server.rest import asgi_bridge, http_wire
from server.rest.asgi_bridge import Exchange
from server.rest.http_wire import Request

if TYPE_CHECKING:
    from server.rest.http11 import HttpServer

log = logging.getLogger("modelbridge.rest")

INF = math.inf
LINGER_SECS = 2.0   # after an error answer, read and drop what the client still sends, so close() sends no RST
MAX_HEADER_BYTES = 64 * 1024   # request line and header fields, and again for trailers
# A refused request's body up to this size is read and dropped and the connection kept; a larger one (or a
# chunked one, or one the client holds back for `100 Continue`) is not read: the connection closes.
DRAIN_MAX_BYTES = 64 * 1024
# CONNECT is for proxies; 405 must name what the server does support (RFC 9110 15.5.6).
_ALLOW = (b"allow", b"GET, HEAD, POST, PUT, OPTIONS")

# Request headers the connection itself acts on (the rest are only passed on).
_FRAMING_HEADERS = {b"content-length": 1, b"inference-header-content-length": 2, b"transfer-encoding": 3,
                    b"expect": 4, b"host": 5}


class _StopParsing(Exception):
    """Raised from a parser callback to abandon the rest of the input (after an error)."""


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        assert server.loop is not None
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.sockname: tuple[str, int] | None = None
        self.queue: deque[Request] = deque()   # headers complete, not yet answered; head = being answered
        self.current: Request | None = None    # the request whose bytes are being parsed
        self.worker: asyncio.Task[None] | None = None   # started with the first request, lives with the connection
        self.busy = False                                  # the worker is answering (else it waits on `wakeup`)
        self.wakeup: asyncio.Future[None] | None = None
        self.closed = False
        self.stopped = False       # input is no longer parsed (after an error, or while lingering)
        self.eof = False
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.exchange: Exchange | None = None  # the ASGI exchange in progress, told of a disconnect
        self.idle_since = 0.0
        self.deadline = INF
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = INF

    # -- transport events ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.sockname = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.idle_since = self.loop.time()
        self._set_deadline(self.idle_since + self.server.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline = INF
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for waiter in (self.queue[0].waiter if self.queue else None, self.drain_waiter, self.wakeup):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self.exchange is not None:
            self.exchange.disconnected()
        self.server.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        # A loop, not a call per request after an upgrade: thousands of pipelined ones must not recurse.
        while data and not self.stopped:
            req = self.current
            body_before = req.size if req is not None and req.headers_done else -1
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                data = self._after_upgrade(data, int(exc.args[0]))
                continue
            except httptools.HttpParserError as exc:
                if not self.stopped:   # not our own _StopParsing
                    self._fail(400, f"malformed HTTP request: {exc}")
                return
            if req is not None and req is self.current:
                # llhttp sets no limit on headers and trailers, and httptools holds a field until it is
                # complete (on_header counts complete ones), so what arrives in between is counted here.
                if not req.headers_done:
                    # headers that began earlier and still go on: all of `data` was headers
                    req.size += len(data)
                    if req.size > MAX_HEADER_BYTES:
                        self._fail(431, f"the request headers exceed {MAX_HEADER_BYTES} bytes")
                elif req.chunk_head and req.size == body_before:
                    # after a chunk-size line and no data byte since: all of `data` was framing or trailers
                    req.framing += len(data)
                    if req.framing > MAX_HEADER_BYTES:
                        self._fail(431, f"the request trailers exceed {MAX_HEADER_BYTES} bytes")
            return

    def eof_received(self) -> bool:
        self.eof = True
        if self.current is not None and not self.stopped:
            self._fail(400, "the connection was half-closed in the middle of a request")
        # Keep the write side open while answers are owed; the worker closes afterwards.
        return bool(self.queue) or self.busy

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)
        if len(self.queue) < self.server.max_pipelined:
            self._resume_reading()

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter
            self.drain_waiter = None

    # -- parser callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.server.draining:
            # Shutting down: answer what has arrived, start nothing new (the client retries elsewhere).
            self.stopped = True
            raise _StopParsing()
        self.current = Request()
        if not self.busy:
            server = self.server
            # Headers are due header_timeout after the previous answer, or after their first byte when
            # an idle connection may wait longer than that.
            start = self.loop.time() if server.keepalive_timeout > server.header_timeout else self.idle_since
            self._set_deadline(start + server.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.current.url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        req: Request = self.current  # type: ignore[assignment]
        req.head_bytes += len(name) + len(value) + 4
        if req.head_bytes > MAX_HEADER_BYTES:
            self._fail(431, f"the request {'trailers' if req.headers_done else 'headers'} exceed "
                            f"{MAX_HEADER_BYTES} bytes")
            raise _StopParsing()
        if req.headers_done:
            return   # a chunked body's trailer field: never a credential, never framing; dropped
        name = name.lower()
        req.headers.append((name, value))
        kind = _FRAMING_HEADERS.get(name)
        if kind is None:
            return
        if kind == 1:
            req.content_length = int(value)  # llhttp has checked the digits
        elif kind == 2:
            req.header_length = value.decode("latin-1")
        elif kind == 3:
            req.chunked = True
        elif kind == 5:
            req.hosts += 1
            req.host = value
        elif value.lower() == b"100-continue":
            req.expect_continue = True

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        parser = self.parser
        req.method = parser.get_method()
        req.http_version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        req.headers_done = True
        req.size = 0   # from here on, the body's size
        self.queue.append(req)
        server = self.server
        if not self._check_head(req):
            raise _StopParsing()
        gate = server.gate
        if gate is not None and (req.content_length or req.chunked) and (req.infer is None or not gate.inference_open):
            refused = gate(req.method, req.target[2], req.headers)
            if refused is not None:
                # Answered in its turn, before its body: the body is dropped as it arrives when it is
                # small and will come, else never read (the connection closes after the answer).
                if (req.chunked or req.expect_continue or req.content_length > DRAIN_MAX_BYTES
                        or not req.keep_alive):
                    self._refuse(refused)
                    raise _StopParsing()
                req.error = refused
                req.drain = True
        if (req.content_length or req.chunked) and not req.expect_continue:
            self._set_deadline(self.loop.time() + server.body_timeout)
        else:
            self.deadline = INF
        if len(self.queue) >= server.max_pipelined:
            self._pause_reading()
        if not self.busy:
            self._kick()

    def _check_head(self, req: Request) -> bool:
        """What the request line and headers must be before anything else is done (RFC 9112 3); False
        after answering the request with an error."""
        if req.head_bytes + len(req.url) > MAX_HEADER_BYTES:
            self._fail(431, f"the request headers exceed {MAX_HEADER_BYTES} bytes")
            return False
        if req.http_version != "1.1" and req.http_version != "1.0":
            # llhttp takes "HTTP/0.9" and "HTTP/2.0" request lines, which are neither (RFC 9112 2.3)
            self._fail(505, f"HTTP/{req.http_version} is not supported: this port speaks HTTP/1.1 and HTTP/1.0")
            return False
        if req.method == b"CONNECT":
            self._fail(405, "CONNECT is not supported: this server is not a proxy", (_ALLOW,))
            return False
        server = self.server
        route = server.routes.get(req.url) or server.route(req.method, req.url)
        if route is None:
            self._fail(400, f"malformed HTTP request: {req.url[:200]!r} is not a request target this server accepts")
            return False
        req.target, authority, infer = route
        if req.method == b"POST":
            req.infer = infer
        if req.hosts > 1 or (req.hosts == 0 and req.http_version != "1.0"):
            self._fail(400, "malformed HTTP request: an HTTP/1.1 request needs exactly one Host header")
            return False
        if req.hosts and req.host not in server.hosts and not server.host_ok(req.host):
            self._fail(400, "malformed HTTP request: the Host header is not a valid host[:port]")
            return False
        if authority is not None and req.hosts:
            # RFC 9112 3.2.2: the absolute-form's authority replaces Host
            req.headers = [(n, authority if n == b"host" else v) for n, v in req.headers]
        if req.content_length > server.max_body_bytes:
            self._fail(413, f"request body of {req.content_length} bytes exceeds the limit of "
                            f"{server.max_body_bytes} bytes")
            return False
        return True

    def on_body(self, body: bytes) -> None:
        req = self.current
        assert req is not None
        if req.drain:
            return
        req.size += len(body)
        if req.size > self.server.max_body_bytes:
            self._fail(413, f"request body exceeds the limit of {self.server.max_body_bytes} bytes")
            raise _StopParsing()
        req.chunks.append(body)

    def on_chunk_header(self) -> None:
        req = self.current
        assert req is not None
        req.chunk_head = True
        req.framing = 0

    def on_chunk_complete(self) -> None:
        self.current.chunk_head = False  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        self.current = None
        req.complete = True
        self.deadline = INF
        if req.waiter is not None and not req.waiter.done():
            req.waiter.set_result(None)
        if req.drain and not self.busy:
            self._idle()   # answered before its body ended: the keep-alive deadline starts now

    def _after_upgrade(self, data: bytes, offset: int) -> bytes:
        """httptools stops at an Upgrade request (h2c, websocket); this server speaks HTTP/1.1 only, so the
        request is answered as a plain one (RFC 9110 7.8 lets a server ignore Upgrade) and parsing resumes
        with a fresh parser. Returns the input still to parse."""
        last = self.queue[-1] if self.queue else None
        if last is not None and (last.content_length or last.chunked):
            # llhttp stops before such a body: there is no telling where the next request starts.
            last.complete = False
            self.current = last
            self._fail(400, "an Upgrade request with a body is not supported")
            return b""
        self.parser = httptools.HttpRequestParser(self)
        return data[offset:]

    # -- errors, timeouts, closing ------------------------------------------------------------------
    def _fail(self, status: int, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Answer `status` after the requests already queued, then close. Input is no longer parsed."""
        self._refuse((status, [http_wire.JSON_TYPE, *extra], http_wire.error_body(message)))

    def _refuse(self, answer: http_wire.Answer) -> None:
        """Answer with `answer` after the requests already queued, then close. Input is no longer parsed."""
        self.stopped = True
        self.deadline = INF
        req = self.current
        self.current = None
        if req is None or not req.headers_done:
            req = Request()
            req.headers_done = True
            self.queue.append(req)
        req.drain = False
        req.error = answer
        if req.waiter is not None and not req.waiter.done():
            req.waiter.set_result(None)
        if not self.busy and not self.closed:
            self._kick()

    def _set_deadline(self, when: float) -> None:
        self.deadline = when
        if when < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(when, self._on_timer)
            self.timer_at = when

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_at = INF
        if self.closed or self.deadline == INF:
            return
        if self.loop.time() < self.deadline:
            self._set_deadline(self.deadline)
            return
        self.deadline = INF
        req = self.current
        if req is None and not self.queue:
            self.close()   # idle keep-alive connection (or one that never sent a byte)
        elif req is not None and not req.headers_done:
            self._fail(408, f"the request headers did not arrive within {self.server.header_timeout:g} s")
        else:
            self._fail(408, f"the request body did not arrive within {self.server.body_timeout:g} s")

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after what is written; nothing more is parsed, no timer acts, no answer starts."""
        self.stopped = True
        self.deadline = INF
        self.queue.clear()
        if not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.stopped = True
        self.deadline = INF
        if not self.closed:
            self.transport.abort()

    def start_drain(self) -> None:
        """Server shutdown: an idle connection closes now, a busy one after its last answer."""
        if not self.busy and not self.queue and self.current is None and not self.closed:
            self.close()

    def _linger_close(self) -> None:
        """Close after an error answer without a reset: half-close, drop late input, close on EOF or soon."""
        self.stopped = True
        self._resume_reading()
        if not self.eof and self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECS, self.transport.close)
        else:
            self.transport.close()

    # -- answering -----------------------------------------------------------------------------------
    def _kick(self) -> None:
        """Set the worker answering: wake it, or start it on a connection's first request. One task per
        connection rather than per request: waking a task costs less than creating one."""
        self.busy = True
        wakeup = self.wakeup
        if wakeup is not None:
            self.wakeup = None
            wakeup.set_result(None)
        elif self.worker is None:
            self.worker = self.loop.create_task(self._serve())
            self.server.workers.add(self.worker)

    async def _serve(self) -> None:
        try:
            while not await self._work():
                self.busy = False
                self._idle()
                if self.closed or self.transport.is_closing():
                    return
                self.wakeup = self.loop.create_future()
                await self.wakeup
                if self.closed:
                    return
        finally:
            self.server.workers.discard(self.worker)  # type: ignore[arg-type]
            self.worker = None
            self.busy = False

    async def _work(self) -> bool:
        """Answer the queue in order; True when the connection is finished (closed or closing)."""
        server = self.server
        try:
            while self.queue and not self.closed:
                req = self.queue[0]
                if not req.complete and req.error is None:
                    if req.expect_continue:
                        self.transport.write(http_wire.CONTINUE)
                        self._set_deadline(self.loop.time() + server.body_timeout)
                    elif self.deadline == INF:
                        self._set_deadline(self.loop.time() + server.body_timeout)
                    req.waiter = self.loop.create_future()
                    await req.waiter
                    req.waiter = None
                    if self.closed:
                        return True
                if req.error is not None:
                    if not req.drain:
                        req.keep_alive = False
                        self.write_response(req, *req.error)
                        self.queue.clear()
                        self._linger_close()
                        return True
                    keep_alive = self.write_response(req, *req.error)
                elif req.infer is not None:
                    keep_alive = await self._infer(req, req.infer)
                else:
                    keep_alive = await self._answer(req)
                self.queue.popleft()
                if self.closed:
                    return True
                if not keep_alive:
                    self.close()
                    return True
                if self.write_paused:
                    await self.drain()
                elif self.read_paused and len(self.queue) < server.max_pipelined:
                    self._resume_reading()
        except Exception:  # a bug here must not leave the client hanging
            log.exception("HTTP connection worker failed")
            self.abort()
            return True
        return self.closed

    def _idle(self) -> None:
        if self.closed:
            return
        if self.eof or self.server.draining and self.current is None:
            self.close()
            return
        now = self.idle_since = self.loop.time()
        req = self.current
        if req is None:
            self._set_deadline(now + self.server.keepalive_timeout)
        elif not req.headers_done:
            self._set_deadline(now + self.server.header_timeout)

    def keep_alive_after(self, req: Request) -> bool:
        """Whether the connection stays open after answering `req` (the queue head)."""
        if not req.keep_alive:
            return False
        if self.server.draining:
            return len(self.queue) > 1 or self.current is not None
        return True

    async def _infer(self, req: Request, target: tuple[str, str]) -> bool:
        server = self.server
        if server.max_concurrency and server.over_limit():
            return self._write_busy(req)
        server.active += 1
        try:
            status, headers, payload = await server.infer(  # type: ignore[misc]
                target[0], target[1], req.body(), req.header_length, req.headers)
        except Exception:
            log.exception("unexpected error in the inference handler")
            status, headers, payload = 500, [http_wire.JSON_TYPE], http_wire.error_body("internal error")
        finally:
            server.active -= 1
        return self.write_response(req, status, headers, payload)

    async def _answer(self, req: Request) -> bool:
        """Any request but inference: through the ASGI app."""
        server = self.server
        if server.max_concurrency and server.over_limit():
            return self._write_busy(req)
        raw_path, query, path = req.target
        server.active += 1
        try:
            return await asgi_bridge.run(self, req, path, raw_path, query)
        finally:
            server.active -= 1

    def _write_busy(self, req: Request) -> bool:
        return self._write_error(req, 503, "the server is at its concurrency limit; retry later",
                                 keep_alive=self.keep_alive_after(req), retry_after=True)

    def write_response(self, req: Request, status: int, headers: http_wire.Headers, payload: bytes) -> bool:
        keep_alive = self.keep_alive_after(req)
        parts = [http_wire.status_line(status)]
        for name, value in headers:
            parts.append(name + b": " + value + b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(payload))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif req.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(http_wire.date_line())
        parts.append(b"\r\n")
        if self.closed:
            return False
        if req.method == b"HEAD" or not payload:
            self.transport.write(b"".join(parts))
        elif len(payload) < 65536:   # one send; a large payload is not copied into the head
            parts.append(payload)
            self.transport.write(b"".join(parts))
        else:
            self.transport.writelines([b"".join(parts), payload])
        return keep_alive

    def _write_error(self, req: Request, status: int, message: str, *, keep_alive: bool,
                     retry_after: bool = False) -> bool:
        if not keep_alive:
            req.keep_alive = False
        headers = [http_wire.JSON_TYPE]
        if retry_after:
            headers.append((b"retry-after", b"1"))
        return self.write_response(req, status, headers, http_wire.error_body(message))
