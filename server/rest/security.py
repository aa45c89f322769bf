"""REST access control, CORS and slow-client limits, as ASGI layers in front of everything else.

Order, outermost first: CORS (so even a 401 carries the allow-origin header the browser needs to
read it, and preflights are answered without a key) -> SecurityLayer (API key per scope, body read
deadline) -> the inference fast path -> FastAPI. The HTTP/1.1 server asks admission.Admission the same
questions from the request head alone, so that a refused request's body is never read. Header stalls
happen before any ASGI code runs; `guarded_http_protocol` closes those connections in uvicorn's
protocol itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.middleware.cors import CORSMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.core.auth import KeyRing, Scope
from server.core.errors import ErrorKind, ModelBridgeError
from server.rest.errors import HTTP_STATUS

ASGIApp = Callable[..., Awaitable[None]]
Message = dict[str, Any]
Headers = list[tuple[bytes, bytes]]

# What a browser client needs to send and to read back (binary extension, ETag cache, overload).
CORS_HEADERS = ["Authorization", "Content-Type", "Inference-Header-Content-Length", "If-None-Match"]
CORS_EXPOSE = ["ETag", "Inference-Header-Content-Length", "Retry-After", "WWW-Authenticate"]


_READ_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})   # POST: infer (repository POSTs are above)


def scope_of(method: str, path: str) -> Scope:
    """Which scope an HTTP request needs. Anything under /v2 that is not a health probe needs at least
    inference, so a route added later is never open by accident."""
    if path in ("/v2/health/live", "/v2/health/ready"):
        return Scope.OPEN
    # Writes other than inference (PUT uploads today; DELETE/PATCH if they ever appear) are administration.
    if path.startswith("/v2/repository") or (method not in _READ_METHODS and path.startswith("/v2")):
        return Scope.ADMIN
    if path == "/v2" or path.startswith("/v2/"):
        return Scope.INFERENCE
    return Scope.OPEN   # /ui, /docs, /openapi.json: static, no model data


def refusal(keys: KeyRing, method: str, path: str, authorization: bytes | str | None,
            ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """None when the request may proceed; else (status, message, extra headers) to answer with.
    Any HTTP front end that answers requests without going through SecurityLayer must call this."""
    try:
        keys.check(scope_of(method, path), authorization)
    except ModelBridgeError as exc:
        extra = [(b"www-authenticate", b'Bearer realm="modelbridge"')] if exc.kind is ErrorKind.UNAUTHENTICATED else []
        return HTTP_STATUS[exc.kind], exc.message, extra
    return None


def cors_headers(cors_origins: list[str]) -> Callable[[Headers, Headers], Headers]:
    """For answers made without CORSMiddleware (the inference fast path, refusals decided from the request
    head): (request headers, answer headers) -> the answer headers plus what CORSMiddleware adds to a
    simple (non-preflight) response."""
    allow_all = "*" in cors_origins
    allowed = {o.encode("latin-1") for o in cors_origins}
    expose = ", ".join(CORS_EXPOSE).encode()

    def add(headers: Headers, answer: Headers) -> Headers:
        origin = None
        for name, value in headers:
            if name == b"origin":
                origin = value
                break
        extra = list(answer)
        if origin is not None:
            extra.append((b"access-control-expose-headers", expose))
            if allow_all:
                extra.append((b"access-control-allow-origin", b"*"))
            elif origin in allowed:
                extra.append((b"access-control-allow-origin", origin))
        extra.append((b"vary", b"Origin"))
        return extra

    return add


class _BodyStalled(BaseException):
    # A BaseException so that no route's `except Exception` turns a stalled upload into a 500.
    pass


class SecurityLayer:
    def __init__(self, app: ASGIApp, keys: KeyRing, *, body_timeout_secs: float = 0.0) -> None:
        self.app = app
        self.keys = keys
        self.body_timeout = body_timeout_secs

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value
                break
        refused = refusal(self.keys, scope["method"], scope["path"], authorization)
        if refused is not None:
            status, message, extra = refused
            await _send_json(send, status, message, extra)
            return
        if self.body_timeout <= 0:
            await self.app(scope, receive, send)
            return
        await self._with_body_deadline(scope, receive, send)

    async def _with_body_deadline(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]],
                                  send: Callable[[Message], Awaitable[None]]) -> None:
        """The whole body must arrive within body_timeout seconds of the headers: a client that stalls
        (or trickles) its body is answered 408 and disconnected instead of holding a worker forever."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()   # after the body: waiting for a disconnect is not a stall
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyStalled() from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except _BodyStalled:
            if not started:
                await _send_json(send, 408, f"the request body did not arrive within {self.body_timeout:g} s",
                                 [(b"connection", b"close")])


async def _send_json(send: Callable[[Message], Awaitable[None]], status: int, message: str,
                     extra: list[tuple[bytes, bytes]]) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def secure_app(app: ASGIApp, keys: KeyRing, *, cors_origins: list[str], body_timeout_secs: float) -> ASGIApp:
    """Wrap the REST app: API keys and body deadline, then CORS outermost when origins are allowed."""
    wrapped: ASGIApp = SecurityLayer(app, keys, body_timeout_secs=body_timeout_secs)
    if cors_origins:
        wrapped = CORSMiddleware(
            wrapped, allow_origins=cors_origins, allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSE, max_age=600,
        )
    return wrapped


def parse_origins(text: str) -> list[str]:
    return [o.strip().rstrip("/") for o in text.replace(",", " ").split() if o.strip()]


def guarded_http_protocol(header_timeout_secs: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, plus: a connection whose request headers are not complete within
    header_timeout_secs of the connection opening (or of the request's first byte) is closed."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_secs, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # Idle keep-alive connections are uvicorn's timeout_keep_alive's business.
            self._disarm()
            super().on_response_complete()

    return GuardedHttpToolsProtocol
