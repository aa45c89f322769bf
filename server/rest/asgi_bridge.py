"""One HTTP request of http11's server run through an ASGI 3 application.

The request body is already buffered whole when the app starts (http11 enforces the size limit and the
body deadline), so `receive` hands it over in one message; a later `receive` waits for the client to
disconnect or the response to end, as ASGI servers do for apps that listen for disconnects. A
response without content-length whose body arrives in several messages is sent chunked.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from server.rest import http_wire

if TYPE_CHECKING:
    from server.rest.http_connection import HttpConnection
    from server.rest.http_wire import Request

log = logging.getLogger("modelbridge.rest")

Message = dict[str, Any]
_DISCONNECT: Message = {"type": "http.disconnect"}
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class Exchange:
    __slots__ = (
        "body",
        "body_given",
        "chunked",
        "complete",
        "conn",
        "head_written",
        "headers",
        "keep_alive",
        "lost",
        "no_body",
        "req",
        "started",
        "status",
        "waiter",
    )

    def __init__(self, conn: HttpConnection, req: Request) -> None:
        self.conn = conn
        self.req = req
        self.body = req.body()
        self.body_given = False
        self.started = False
        self.complete = False
        self.status = 0
        self.headers: http_wire.Headers = []
        self.chunked = False
        self.keep_alive = True
        self.no_body = req.method == b"HEAD"
        self.head_written = False
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False

    def disconnected(self) -> None:
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> Message:
        if not self.body_given:
            self.body_given = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        if not (self.complete or self.lost):
            self.waiter = self.conn.loop.create_future()
            await self.waiter
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI app sent 'http.response.start' twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = list(message.get("headers", ()))
            if self.status < 200 or self.status in http_wire.NO_BODY_STATUSES:
                self.no_body = True
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started or self.complete:
            raise RuntimeError("ASGI app sent a body outside a response")
        body = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not more:
            self.complete = True
        conn = self.conn
        if self.lost or conn.closed:
            return
        if not self.head_written:
            conn.transport.write(self._head(len(body), more))
            self.head_written = True
        if not self.no_body:
            if self.chunked:
                if body:
                    conn.transport.write(b"%x\r\n" % len(body) + body + b"\r\n")
                if not more:
                    conn.transport.write(b"0\r\n\r\n")
            elif body:
                conn.transport.write(body)
        if not more:
            self._wake()
        elif conn.write_paused:
            await conn.drain()

    def _head(self, first_len: int, more: bool) -> bytes:
        req = self.req
        has_length = False
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                has_length = True
            elif lname == b"transfer-encoding":
                has_length = True   # the app frames the body itself
            elif lname == b"connection" and value.lower() == b"close":
                req.keep_alive = False
        self.keep_alive = self.conn.keep_alive_after(req)
        extra = b""
        if not has_length and not (self.status < 200 or self.status in http_wire.NO_BODY_STATUSES):
            if not more:
                extra = b"content-length: %d\r\n" % first_len
            elif req.http_version == "1.1":
                self.chunked = True
                extra = b"transfer-encoding: chunked\r\n"
            else:
                self.keep_alive = False   # HTTP/1.0: the end of the body is the end of the connection
        if not self.keep_alive:
            extra += b"connection: close\r\n"
        elif req.http_version == "1.0":
            extra += b"connection: keep-alive\r\n"
        return http_wire.response_head(self.status, self.headers, extra)


async def run(conn: HttpConnection, req: Request, path: str, raw_path: bytes, query: bytes) -> bool:
    """Run the app for `req`; return whether the connection stays open."""
    scope = {
        "type": "http", "asgi": _ASGI, "http_version": req.http_version, "method": req.method.decode("latin-1"),
        "scheme": "http", "path": path, "raw_path": raw_path, "query_string": query, "root_path": "",
        "headers": req.headers, "client": conn.client, "server": conn.sockname,
    }
    exchange = Exchange(conn, req)
    conn.exchange = exchange
    try:
        await conn.server.app(scope, exchange.receive, exchange.send)
    except Exception as exc:
        log.exception("unexpected error in the REST app")
        if not exchange.head_written:
            return conn.write_response(req, 500, [http_wire.JSON_TYPE],
                                       http_wire.error_body(f"internal error: {type(exc).__name__}"))
        return False   # half a response went out: only closing tells the client
    finally:
        conn.exchange = None
        exchange._wake()
    if not exchange.head_written:
        log.error("the REST app returned without a response for %s %s", scope["method"], path)
        return conn.write_response(req, 500, [http_wire.JSON_TYPE],
                                   http_wire.error_body("internal error: no response"))
    if not exchange.complete:
        log.error("the REST app returned before its response was complete for %s %s", scope["method"], path)
        return False
    return exchange.keep_alive
