"""The gRPC port served by our HTTP/2 layer (http2.py, on the h2 library) instead of grpcio's server.

The servicers are the same objects grpcio would serve — GRPCInferenceService (servicer.py), the
health service and reflection — registered through their generated `add_*_to_server` functions into
a `Registry`, so every method keeps its own (de)serializers and behaviour. A `Call` runs one rpc:
it reassembles length-prefixed messages from DATA, checks access (the same KeyRing and scopes as the
grpcio interceptor in auth.py), honours `grpc-timeout`, runs the behaviour with a small ServicerContext
stand-in, and answers with headers, messages and trailers (or trailers only, for an error).

Compressed requests (gzip, deflate) are inflated up to the message-size limit; responses are not
compressed. Not done here: TLS (put a proxy in front, as for REST).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import ipaddress
import logging
import socket
import zlib
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from server.core.auth import KeyRing, Scope
from server.core.errors import ModelBridgeError, Unavailable
from server.grpc.auth import scope_of
from server.grpc.errors import STATUS
from server.grpc.http2 import NO_ERROR, Connection, Stream, encode_literal

log = logging.getLogger("modelbridge.grpc")

HEAD = b"\x88" + encode_literal("content-type", "application/grpc")   # \x88: ":status: 200" (static index 8)
OK_TRAILERS = encode_literal("grpc-status", "0")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_RESERVED = frozenset({"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"})
_EOF = object()   # what read() returns past the end of a request stream
MAX_METADATA = 16 * 1024   # a request's decoded header list (RFC 9113 §6.5.2 sizes), as grpc-core caps it
_WBITS = {"gzip": 31, "deflate": 15}   # zlib window bits: gzip wrapper, zlib wrapper (gRPC's "deflate")


class Registry:
    """Collects what generated `add_XServicer_to_server(servicer, server)` functions register."""

    def __init__(self) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass   # the same handlers arrive by name through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self.methods[f"/{service}/{name}"] = handler


class Aborted(grpc.aio.AbortError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _percent(message: str) -> bytes:
    # grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2 spec): printable ASCII except '%' as is.
    out = bytearray()
    for b in message.encode("utf-8", "replace"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def status_block(code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, Any], ...] = ()) -> bytes:
    block = encode_literal("grpc-status", str(code.value[0]))
    if message:
        block += encode_literal("grpc-message", _percent(message))
    for key, value in trailing:
        block += encode_literal(key, value if isinstance(value, bytes) else str(value))
    return block


def parse_timeout(value: str) -> float | None:
    if 2 <= len(value) <= 9 and value.isascii() and value[:-1].isdigit() and value[-1] in _TIMEOUT_UNITS:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    return None


class Context:
    """The part of grpc.aio.ServicerContext our servicers, grpc_health and grpc_reflection use."""

    __slots__ = ("call", "deadline", "metadata", "trailing")

    def __init__(self, call: Call, metadata: tuple[tuple[str, Any], ...], deadline: float | None) -> None:
        self.call = call
        self.metadata = metadata
        self.deadline = deadline
        self.trailing: tuple[tuple[str, Any], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.call.front.loop.time())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise Aborted(code, details)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self.trailing = tuple(trailing_metadata)

    def peer(self) -> str:
        return self.call.stream.conn.peer

    def cancelled(self) -> bool:
        return self.call.cancelled

    def done(self) -> bool:
        return self.call.finished

    async def write(self, message: Any) -> None:
        await self.call.write(message)

    async def read(self) -> Any:
        return await self.call.read()


class Call:
    """One rpc on one stream."""

    __slots__ = (
        "buf",
        "cancelled",
        "counted",
        "ctx",
        "encoding",
        "finished",
        "front",
        "handler",
        "headers_sent",
        "messages",
        "method",
        "queue",
        "queued",
        "stream",
        "task",
        "timer",
        "unary",
        "withheld",
    )

    def __init__(self, front: GrpcFront, stream: Stream, method: str, handler: grpc.RpcMethodHandler,
                 metadata: tuple[tuple[str, Any], ...], deadline: float | None, encoding: str = "identity") -> None:
        self.front = front
        self.encoding = encoding
        self.stream = stream
        self.method = method
        self.handler = handler
        self.unary = not handler.request_streaming
        self.buf = bytearray()
        self.messages: list[bytes] = []
        self.ctx = Context(self, metadata, deadline)
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.cancelled = False
        self.finished = False
        self.headers_sent = False
        self.counted = True   # in front.active until _close
        self.queue: asyncio.Queue[tuple[int, bytes] | None] | None = None if self.unary else asyncio.Queue()
        self.queued = 0     # wire bytes of whole messages the handler has not read yet
        self.withheld = 0   # received bytes not yet credited back to the windows
        front.active += 1
        if deadline is not None:
            self.timer = front.loop.call_at(deadline, self._expired)
        if not self.unary:   # a request stream: run now, messages are read as they come
            self.task = front.loop.create_task(self._run())

    # ---- from the HTTP/2 layer ----
    def on_data(self, data: bytes) -> None:
        self.withheld += len(data)
        if not self.finished:
            self._take(data)
        if self.finished:
            self.queued = 0   # nothing will read them: all credit goes back
        self._credit()

    def _take(self, data: bytes) -> None:
        # Malformed framing is the client's fault: INVALID_ARGUMENT, as for any other bad input.
        buf = self.buf
        buf += data
        limit = self.front.max_message_bytes
        while len(buf) >= 5:
            if buf[0] not in (0, 1):
                self._fail(grpc.StatusCode.INVALID_ARGUMENT, "bad gRPC message prefix (compressed flag not 0 or 1)")
                return
            if buf[0] == 1 and self.encoding not in _WBITS:
                self._fail(grpc.StatusCode.UNIMPLEMENTED,
                           f"a compressed message with grpc-encoding {self.encoding[:40]!r}: gzip and deflate are supported")
                return
            size = int.from_bytes(buf[1:5], "big")
            if size > limit:
                self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"Received message larger than max ({size} vs. {limit})")
                return
            if len(buf) < 5 + size:
                break
            message = bytes(buf[5:5 + size])
            if buf[0] == 1:
                inflated = self._inflate(message)
                if inflated is None:
                    return
                message = inflated
            del buf[:5 + size]
            wire = 5 + size
            if self.unary:
                self.messages.append(message)
                if len(self.messages) > 1:
                    self._fail(grpc.StatusCode.INVALID_ARGUMENT, f"{self.method} takes one request message, got more")
                    return
            else:
                assert self.queue is not None
                self.queue.put_nowait((wire, message))
                self.queued += wire

    def _credit(self) -> None:
        # Reopen the windows for every byte except those of whole messages not read yet: a message larger
        # than the window is credited as it arrives (holding it back would deadlock), while unread messages
        # hold theirs, so what a stream buffers stays within the window we advertised plus one message.
        excess = self.withheld - self.queued
        if excess > 0:
            self.withheld -= excess
            self.stream.consumed(excess)

    def _inflate(self, data: bytes) -> bytes | None:
        limit = self.front.max_message_bytes
        inflater = zlib.decompressobj(_WBITS[self.encoding])
        try:
            out = inflater.decompress(data, limit + 1)
        except zlib.error as exc:
            self._fail(grpc.StatusCode.INVALID_ARGUMENT, f"the {self.encoding} message cannot be decompressed: {exc}")
            return None
        if len(out) > limit:
            self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max (over {limit} inflated)")
            return None
        return out

    def on_end(self) -> None:
        if self.finished:
            return
        if self.buf:
            self._fail(grpc.StatusCode.INVALID_ARGUMENT, "the request ended inside a message")
            return
        if self.unary:
            if not self.messages:
                self._fail(grpc.StatusCode.INVALID_ARGUMENT, f"{self.method} got no request message")
                return
            self.task = self.front.loop.create_task(self._run())
        else:
            assert self.queue is not None
            self.queue.put_nowait(None)

    def on_reset(self) -> None:
        self.cancelled = True
        self._close(cancel=True)

    # ---- running ----
    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            item = await self.read()
            if item is _EOF:
                return
            yield item

    async def read(self) -> Any:
        assert self.queue is not None
        item = await self.queue.get()
        if item is None:
            self.queue.put_nowait(None)   # stays at the end for further reads
            return _EOF
        wire, message = item
        self.queued -= wire
        self._credit()
        return self._parse(message)

    def _parse(self, message: bytes) -> Any:
        parse = self.handler.request_deserializer
        if parse is None:
            return message
        try:
            return parse(message)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and whatever a parser raises
            raise Aborted(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request message cannot be parsed: {str(exc)[:200]}") from None

    def _serialize(self, response: Any) -> bytes:
        serialize = self.handler.response_serializer
        data = serialize(response) if serialize is not None else response
        if len(data) > self.front.max_message_bytes:
            raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"response message larger than max ({len(data)} vs. {self.front.max_message_bytes})")
        return data

    async def write(self, response: Any) -> None:
        if self.finished:
            raise asyncio.CancelledError
        data = self._serialize(response)
        if not self.headers_sent:
            self.headers_sent = True
            self.stream.send_headers(HEAD)
        self.stream.send_data(len(data).to_bytes(5, "big") + data)
        await self.stream.wait_drained()

    async def _run(self) -> None:
        h = self.handler
        ctx = self.ctx
        try:
            if h.unary_unary is not None:
                request = self._parse(self.messages[0])
                response = await h.unary_unary(request, ctx)
                self._answer_unary(response)
                return
            if h.unary_stream is not None:
                result = h.unary_stream(self._parse(self.messages[0]), ctx)
            elif h.stream_stream is not None:
                result = h.stream_stream(self._requests(), ctx)
            else:
                response = await h.stream_unary(self._requests(), ctx)
                self._answer_unary(response)
                return
            if inspect.isasyncgen(result):
                async for response in result:
                    await self.write(response)
            else:
                await result   # a coroutine that writes through ctx.write
            self._trailers(grpc.StatusCode.OK, "")
        except Aborted as exc:
            self._trailers(exc.code, exc.details)
        except asyncio.CancelledError:
            if not self.cancelled and not self.finished:   # our own shutdown
                self._trailers(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        except ModelBridgeError as exc:
            self._trailers(STATUS[exc.kind], exc.message)
        except Exception as exc:
            log.exception("rpc %s failed unexpectedly", self.method)
            self._trailers(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            self._close(cancel=False)

    def _answer_unary(self, response: Any) -> None:
        """Called inside _run's try: an oversized response's Aborted ends the call like any other."""
        if self.finished:
            return
        data = self._serialize(response)
        self.finished = True
        trailers = status_block(grpc.StatusCode.OK, "", self.ctx.trailing) if self.ctx.trailing else OK_TRAILERS
        self.stream.send_unary(HEAD, len(data).to_bytes(5, "big") + data, trailers)

    def _trailers(self, code: grpc.StatusCode, message: str) -> None:
        if self.finished:
            return
        self.finished = True
        block = status_block(code, message, self.ctx.trailing)
        if self.headers_sent:
            self.stream.send_headers(block, end_stream=True)
        else:   # trailers-only
            self.stream.send_headers(HEAD + block, end_stream=True)
        if not self.stream.remote_closed and not self.stream.pending:
            # Answered before the request ended (an error): tell the client to stop sending (RFC 9113 §8.1).
            self.stream.reset(NO_ERROR)

    def _fail(self, code: grpc.StatusCode, message: str) -> None:
        self._trailers(code, message)
        self._close(cancel=True)

    def _expired(self) -> None:
        self.timer = None
        self._trailers(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self._close(cancel=True)

    def _close(self, *, cancel: bool) -> None:
        if self.withheld:   # unread messages of a call that ended: the connection window gets them back
            self.queued = 0
            self._credit()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.front.active -= 1
        task, self.task = self.task, None
        if cancel:
            self.finished = True
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()


class GrpcFront:
    """Listens on the gRPC port; `stop(grace)` mirrors grpc.aio.Server.stop."""

    def __init__(self, registry: Registry, *, keys: KeyRing, max_message_bytes: int, max_concurrent_rpcs: int = 0,
                 idle_body_timeout: float = 60.0, max_streams: int = 1000) -> None:
        self.registry = registry
        self.keys = keys
        self.max_message_bytes = max_message_bytes
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.idle_body_timeout = idle_body_timeout
        self.max_streams = max_streams
        self.loop = asyncio.get_running_loop()   # built inside start_grpc_server
        self.active = 0
        self.connections: set[Connection] = set()
        self._fields: dict[tuple[tuple[bytes, bytes], ...], _Fields] = {}   # header list -> _read_headers of it
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            try:
                family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
            except ValueError:   # a name: asyncio resolves it (and may bind several addresses)
                self._server = await self.loop.create_server(
                    self._connection, host, port, backlog=2048, reuse_address=True, reuse_port=reuse_port or None)
                return
            # A literal address listens before the first await, so the REST port cannot report ready while
            # the gRPC port still refuses connections.
            sock = socket.create_server((host, port), family=family, backlog=2048, reuse_port=reuse_port)
            self._server = await self.loop.create_server(self._connection, sock=sock)
        except OSError as exc:
            raise Unavailable(f"gRPC cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def _connection(self) -> Connection:
        conn = Connection(self, max_streams=self.max_streams, idle_body_timeout=self.idle_body_timeout,
                            on_close=self._closed)
        self.connections.add(conn)
        self._all_closed.clear()
        return conn

    def _closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._all_closed.set()

    # ---- Router ----
    def open(self, stream: Stream, raw: list[tuple[bytes, bytes]]) -> Call | _Refused:
        # Clients repeat a request's header list call after call: what is read from it is read once.
        key = tuple(raw)
        fields = self._fields.get(key)
        if fields is None:
            fields = _read_headers(raw)
            if fields[6] <= 4096:   # bounded: at most 128 lists of 4 KiB held
                if len(self._fields) >= 128:
                    self._fields.clear()
                self._fields[key] = fields
        path, method, content_type, timeout, encoding, metadata, size = fields
        if size > MAX_METADATA:
            return _Refused.status(stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"request metadata of {size} bytes is over the {MAX_METADATA} byte limit")
        if method != "POST":
            return _Refused.http(stream, encode_literal(":status", "405"))
        if not content_type.startswith("application/grpc"):
            return _Refused.http(stream, encode_literal(":status", "415"))
        handler = self.registry.methods.get(path)
        if handler is None:
            return _Refused.status(stream, grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path[:200]}")
        scope = scope_of(path)
        if scope is not Scope.OPEN:
            try:
                self.keys.check(scope, next((v for k, v in metadata if k == "authorization"), None))
            except ModelBridgeError as exc:
                return _Refused.status(stream, STATUS[exc.kind], exc.message)
        deadline = None
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                return _Refused.status(stream, grpc.StatusCode.INVALID_ARGUMENT, f"bad grpc-timeout {timeout[:20]!r}")
            deadline = self.loop.time() + seconds
        if self.max_concurrent_rpcs and self.active >= self.max_concurrent_rpcs:
            return _Refused.status(stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"more than {self.max_concurrent_rpcs} concurrent rpcs")
        return Call(self, stream, path, handler, metadata, deadline, encoding)

    # ---- lifecycle ----
    async def stop(self, grace: float | None) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.goaway(NO_ERROR)
        if self.connections and grace:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except TimeoutError:
                pass
        for conn in list(self.connections):
            for stream in list(conn.streams.values()):
                handler = stream.handler
                if isinstance(handler, Call):
                    handler._trailers(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
                    handler._close(cancel=True)
            if conn.transport is not None:
                conn.close_transport()
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()


class _Refused:
    """A stream answered at once from its headers (refused, unknown method, bad headers)."""

    unary = True

    @classmethod
    def status(cls, stream: Stream, code: grpc.StatusCode, message: str) -> _Refused:
        return cls.http(stream, HEAD + status_block(code, message))

    @classmethod
    def http(cls, stream: Stream, block: bytes) -> _Refused:
        stream.send_headers(block, end_stream=True)
        if not stream.remote_closed:
            stream.reset(NO_ERROR)
        return cls()

    def on_data(self, data: bytes) -> None:
        pass

    def on_end(self) -> None:
        pass

    def on_reset(self) -> None:
        pass


_Fields = tuple[str, str, str, "str | None", str, tuple[tuple[str, Any], ...], int]


def _read_headers(raw: list[tuple[bytes, bytes]]) -> _Fields:
    """path, method, content-type, grpc-timeout, grpc-encoding, the metadata, and the list's size as
    RFC 9113 §6.5.2 counts it."""
    try:
        headers = [(k.decode(), v.decode()) for k, v in raw]
    except UnicodeDecodeError:   # not UTF-8: kept byte for byte, never an exception further up
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    method = path = content_type = ""
    timeout: str | None = None
    encoding = "identity"
    metadata: list[tuple[str, Any]] = []
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 32
        if name[0] == ":":
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
        elif name == "content-type":
            content_type = value
        elif name == "grpc-timeout":
            timeout = value
        elif name == "grpc-encoding":
            encoding = value
        elif name not in _RESERVED:
            metadata.append((name, _binary(value) if name.endswith("-bin") else value))
    return path, method, content_type, timeout, encoding, tuple(metadata), size


def _binary(value: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return b""

