"""HTTP/2 (RFC 9113) for the gRPC port: framing, HPACK, flow control and stream states, no gRPC in it.

Why our own: grpcio's asyncio server spends ~0.7 ms of CPU per unary call on this project's machine,
whatever the model, which capped gRPC at a fraction of the REST port (BENCHMARKS.md). gRPC over
HTTP/2 is a small subset of the protocol — cleartext with prior knowledge, client-initiated streams,
no push — and this module implements that subset the way the REST port's http11.py does HTTP/1.1:
an asyncio.Protocol per connection, bytes parsed in place, each response written with one call.

The gRPC layer above (front.py) sees a `Stream`: request headers, whole request messages, and
`send_headers` / `send_message` / `send_trailers`, which queue bytes under the peer's flow-control
windows and write as much as they allow.

Bounds (hostile peers): header blocks (CONTINUATION flood) and decoded header lists, frame sizes,
concurrent streams, the preface and the first SETTINGS within a timeout, a request body that stops
arriving (the slowloris of HTTP/2), window overflows; every violation ends the stream (RST_STREAM) or
the connection (GOAWAY) with the code RFC 9113 names.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol

import hpack
import hpack.exceptions

log = logging.getLogger("modelbridge.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB

S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384

# What we announce. A large receive window lets a client send a whole request without waiting for
# WINDOW_UPDATEs; memory stays bounded by the message-size limit per stream and the stream cap.
RECV_FRAME = 1 << 20
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 24
MAX_HEADER_LIST = 64 * 1024

_HEAD = struct.Struct(">I B I")   # length<<8 | type, flags, stream id (packed below)
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + _U32.pack(stream_id) + payload


class ConnectionError_(Exception):
    """A connection error: GOAWAY with `code`, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Handler(Protocol):
    """What the layer above attaches to a stream when its request headers are complete."""

    def on_data(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self) -> None: ...


class Router(Protocol):
    def open(self, stream: Stream, headers: list[tuple[str, str]]) -> Handler: ...


class Stream:
    __slots__ = (
        "body_timer",
        "conn",
        "drained",
        "end_after_pending",
        "handler",
        "id",
        "local_closed",
        "pending",
        "pending_bytes",
        "recv_unacked",
        "remote_closed",
        "send_window",
    )

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self.id = stream_id
        self.conn = conn
        self.handler: Handler | None = None
        self.send_window = conn.peer_initial_window
        self.pending: deque[bytes] = deque()   # DATA payloads waiting for window
        self.pending_bytes = 0
        self.end_after_pending: bytes | None = None   # the trailers' HEADERS frame, sent after the data
        self.remote_closed = False
        self.local_closed = False
        self.recv_unacked = 0
        self.drained: asyncio.Event | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    # ---- sending (called by the layer above) ----
    def send_headers(self, block: bytes, *, end_stream: bool = False) -> None:
        if self.local_closed:
            return
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        if self.pending:   # trailers must follow the data still queued
            assert end_stream
            self.end_after_pending = self.conn.header_frames(self.id, block, flags)
            return
        self.conn.write(self.conn.header_frames(self.id, block, flags))
        if end_stream:
            self.local_closed = True
            self.conn.maybe_forget(self)

    def _take_window(self, n: int) -> bool:
        """Debit n bytes from both send windows if one DATA frame of n bytes may go out now."""
        conn = self.conn
        if self.pending or n > self.send_window or n > conn.send_window or n > conn.peer_max_frame:
            return False
        self.send_window -= n
        conn.send_window -= n
        return True

    def send_data(self, payload: bytes) -> None:
        """Queue DATA (already gRPC-framed) and write what the windows allow."""
        if self.local_closed or not payload:
            return
        if self._take_window(len(payload)):
            self.conn.write(frame(DATA, 0, self.id, payload))
            return
        self.pending.append(payload)
        self.pending_bytes += len(payload)
        self.flush()

    def send_unary(self, head: bytes, message: bytes, trailers: bytes) -> None:
        """Response headers, one DATA and trailers in one write when the windows allow (the hot path)."""
        if self.local_closed:
            return
        if self._take_window(len(message)):
            self.local_closed = True
            conn = self.conn
            conn.write(conn.header_frames(self.id, head, END_HEADERS) + frame(DATA, 0, self.id, message)
                       + conn.header_frames(self.id, trailers, END_HEADERS | END_STREAM))
            conn.maybe_forget(self)
            return
        self.send_headers(head)
        self.send_data(message)
        self.send_headers(trailers, end_stream=True)

    def flush(self) -> None:
        conn = self.conn
        out = []
        while self.pending and self.send_window > 0 and conn.send_window > 0:
            chunk = self.pending[0]
            room = min(self.send_window, conn.send_window, conn.peer_max_frame)
            if len(chunk) > room:
                piece, self.pending[0] = chunk[:room], chunk[room:]
            else:
                piece = self.pending.popleft()
            self.send_window -= len(piece)
            conn.send_window -= len(piece)
            self.pending_bytes -= len(piece)
            out.append(frame(DATA, 0, self.id, piece))
        if not self.pending and self.end_after_pending is not None:
            out.append(self.end_after_pending)
            self.end_after_pending = None
            self.local_closed = True
        if out:
            conn.write(b"".join(out))
        if not self.pending:
            if self.drained is not None:
                self.drained.set()
            if self.local_closed:
                conn.maybe_forget(self)
        else:
            conn.blocked.add(self)

    async def wait_drained(self, limit: int = 1 << 20) -> None:
        """Backpressure for streaming responses: wait while more than `limit` bytes are queued."""
        while self.pending_bytes > limit and not self.local_closed and not self.conn.closed:
            if self.drained is None or self.drained.is_set():
                self.drained = asyncio.Event()
            await self.drained.wait()
        await self.conn.writable()

    def reset(self, code: int) -> None:
        """End the stream from our side (RST_STREAM); the layer above has already stopped caring."""
        if self.local_closed and self.remote_closed:
            return
        self.local_closed = self.remote_closed = True
        self.pending.clear()
        self.pending_bytes = 0
        self.end_after_pending = None
        self.conn.write(frame(RST_STREAM, 0, self.id, _U32.pack(code)))
        self.conn.maybe_forget(self)

    def consumed(self, n: int) -> None:
        """The layer above took n bytes of body: reopen the stream window by that much in batches."""
        if self.remote_closed:
            return
        self.recv_unacked += n
        if self.recv_unacked >= STREAM_WINDOW // 2:
            self.conn.write(frame(WINDOW_UPDATE, 0, self.id, _U32.pack(self.recv_unacked)))
            self.recv_unacked = 0


class H2Connection(asyncio.Protocol):
    def __init__(self, router: Router, *, max_streams: int, idle_body_timeout: float,
                 preface_timeout: float = 10.0, on_close: Callable[[H2Connection], None] | None = None) -> None:
        self.router = router
        self.max_streams = max_streams
        self.idle_body_timeout = idle_body_timeout
        self.preface_timeout = preface_timeout
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.preface_ok = False
        self.settings_seen = False
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_LIST
        self.decoder.max_allowed_table_size = 4096
        # Header blocks that leave the dynamic table as it was decode the same way until the table
        # changes: clients repeat them byte for byte (every field indexed), so decode each once.
        self.header_cache: dict[bytes, list[tuple[str, str]]] = {}
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.streams: dict[int, Stream] = {}
        self.blocked: set[Stream] = set()
        self.last_stream = 0
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.send_window = DEFAULT_WINDOW
        self.recv_unacked = 0
        self.header_block: bytearray | None = None   # a header block awaiting CONTINUATION
        self.header_stream = 0
        self.header_flags = 0
        self.closed = False
        self.going_away = False
        self.peer: str = ""
        self._paused = False
        self._resume: asyncio.Future[None] | None = None
        self._preface_timer: asyncio.TimerHandle | None = None

    # ---- transport ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"ipv4:{peer[0]}:{peer[1]}"
        settings = b"".join(_SETTING.pack(k, v) for k, v in (
            (S_MAX_CONCURRENT_STREAMS, self.max_streams), (S_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (S_MAX_FRAME_SIZE, RECV_FRAME), (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST), (S_ENABLE_PUSH, 0)))
        self.write(frame(SETTINGS, 0, 0, settings)
                   + frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))
        self._preface_timer = self.loop.call_later(self.preface_timeout, self._preface_expired)

    def _preface_expired(self) -> None:
        if not self.settings_seen:
            self.goaway(PROTOCOL_ERROR, "no HTTP/2 preface and SETTINGS in time")

    def write(self, data: bytes) -> None:
        """Queue bytes; they go out in one write per event-loop turn, so responses finished together
        (a dynamic batch) cost one system call, not one each."""
        if self.closed or self.transport is None:
            return
        if not self._out and len(self.streams) <= 1:
            # Nothing else in flight on this connection: nothing to coalesce with, so no extra loop turn.
            self.transport.write(data)
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_out)

    def close_transport(self) -> None:
        self._flush_out()
        if self.transport is not None:
            self.transport.close()

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause_writing(self) -> None:
        # The peer is not reading what we send: stop reading what it sends too, so a flood of PINGs,
        # SETTINGS or requests cannot grow our output buffer without bound.
        self._paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)
        self._resume = None

    async def writable(self) -> None:
        if self._paused and not self.closed:
            if self._resume is None:
                self._resume = self.loop.create_future()
            await self._resume

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        self.resume_writing()
        for stream in list(self.streams.values()):   # none is closed both ways: those were forgotten
            self._drop(stream)
        self.streams.clear()
        if self.on_close is not None:
            self.on_close(self)

    def _drop(self, stream: Stream) -> None:
        """The stream ends before its exchange did: stop its timer, wake its writer, tell its handler."""
        if stream.body_timer is not None:
            stream.body_timer.cancel()
        if stream.drained is not None:
            stream.drained.set()
        handler, stream.handler = stream.handler, None
        if handler is not None:
            handler.on_reset()

    def header_frames(self, stream_id: int, block: bytes, flags: int) -> bytes:
        limit = self.peer_max_frame
        if len(block) <= limit:
            return frame(HEADERS, flags, stream_id, block)
        parts = [block[i:i + limit] for i in range(0, len(block), limit)]
        out = [frame(HEADERS, flags & ~END_HEADERS, stream_id, parts[0])]
        for i, part in enumerate(parts[1:], 1):
            out.append(frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, stream_id, part))
        return b"".join(out)

    def maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            if stream.body_timer is not None:
                stream.body_timer.cancel()
            self.streams.pop(stream.id, None)
            self.blocked.discard(stream)
            stream.handler = None
            if self.going_away and not self.streams and self.transport is not None:
                self.close_transport()

    def goaway(self, code: int, message: str = "") -> None:
        """Refuse new streams; with an error code also close at once (the connection is unusable)."""
        if self.closed or self.transport is None:
            return
        self.going_away = True
        debug = message.encode()[:200]
        self.write(frame(GOAWAY, 0, 0, _U32.pack(self.last_stream) + _U32.pack(code) + debug))
        self._flush_out()
        if code != NO_ERROR:
            if message:
                log.info("gRPC connection from %s closed: %s", self.peer or "?", message)
            self.close_transport()
        elif not self.streams:
            self.close_transport()

    # ---- receiving ----
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        try:
            if not self.preface_ok:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs HTTP/2)")
                    return
                if buf[:len(PREFACE)] != PREFACE:
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs HTTP/2)")
                del buf[:len(PREFACE)]
                self.preface_ok = True
            pos = 0
            end = len(buf)
            while end - pos >= 9 and not self.closed:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > RECV_FRAME:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes over {RECV_FRAME}")
                if end - pos < 9 + length:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                stream_id = _U32.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
                payload = bytes(buf[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream_id, payload)
            del buf[:pos]
        except ConnectionError_ as exc:
            self.buf.clear()
            self.goaway(exc.code, str(exc))

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.header_block is not None and (kind != CONTINUATION or sid != self.header_stream):
            raise ConnectionError_(PROTOCOL_ERROR, "a header block was interrupted before END_HEADERS")
        if not self.settings_seen and kind != SETTINGS:
            raise ConnectionError_(PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if sid != 0:
                raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if sid == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise ConnectionError_(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
            if sid > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            stream = self.streams.pop(sid, None)
            if stream is not None:
                stream.local_closed = stream.remote_closed = True
                self.blocked.discard(stream)
                self._drop(stream)
        elif kind == GOAWAY:
            if sid != 0:
                raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
            self.going_away = True   # the peer opens nothing more; answer what is open, then close
            if not self.streams and self.transport is not None:
                self.close_transport()
        elif kind == PRIORITY:
            if sid == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._reset_stream(sid, FRAME_SIZE_ERROR)
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "a client cannot push")
        # unknown frame types are ignored (RFC 9113 §4.1)

    def _abort(self, stream: Stream, code: int) -> None:
        """Reset a stream from our side, its handler told first (reset() forgets the stream)."""
        self._drop(stream)
        stream.reset(code)

    def _reset_stream(self, sid: int, code: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            self._abort(stream, code)
        else:
            self.write(frame(RST_STREAM, 0, sid, _U32.pack(code)))

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        for off in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, off)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ConnectionError_(FLOW_CONTROL_ERROR, "a stream window grew over 2^31-1")
            elif key == S_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= (1 << 24) - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH is not 0 or 1")
            # header table size: we never index into the peer's decoder table, so any size will do
        self.write(frame(SETTINGS, ACK, 0))
        if not self.settings_seen:
            self.settings_seen = True
            if self._preface_timer is not None:
                self._preface_timer.cancel()
        self._unblock()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self._unblock()
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if inc == 0:
            self._reset_stream(sid, PROTOCOL_ERROR)
            return
        stream.send_window += inc
        if stream.send_window > MAX_WINDOW:
            self._reset_stream(sid, FLOW_CONTROL_ERROR)
            return
        if stream.pending:
            stream.flush()

    def _unblock(self) -> None:
        for stream in list(self.blocked):
            if self.send_window <= 0:
                break
            self.blocked.discard(stream)
            stream.flush()

    @staticmethod
    def _unpad(flags: int, payload: bytes, *, priority: bool = False) -> bytes:
        start = 0
        end = len(payload)
        if flags & PADDED:
            if not payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "padded frame without a pad length")
            start = 1
            end -= payload[0]
        if priority:
            start += 5
        if end < start:
            raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[start:end]

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload, priority=bool(flags & PRIORITY_FLAG))
        if flags & END_HEADERS:
            self._header_block(sid, flags, block)
        else:
            self.header_block = bytearray(block)
            self.header_stream = sid
            self.header_flags = flags

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if self.header_block is None:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        self.header_block += payload
        if len(self.header_block) > MAX_HEADER_LIST * 2:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            block, self.header_block = bytes(self.header_block), None
            self._header_block(sid, self.header_flags, block)

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        cached = self.header_cache.get(block)
        if cached is not None:
            headers = cached
        else:
            headers = self._decode(block)
        self._open_or_trail(sid, flags, headers)

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        table = self.decoder.header_table.dynamic_entries
        before = (len(table), id(table[0]) if table else 0)
        try:
            headers = [(str(k), str(v)) for k, v in self.decoder.decode(block)]
        except hpack.exceptions.OversizedHeaderListError:
            # Decoding stopped half way, so the dynamic table no longer matches the peer's: the connection
            # cannot go on.
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"header list over {MAX_HEADER_LIST} bytes") from None
        except (hpack.exceptions.HPACKError, UnicodeDecodeError, IndexError, ValueError) as exc:
            raise ConnectionError_(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        if (len(table), id(table[0]) if table else 0) != before:
            self.header_cache.clear()   # the table changed: cached decodings may no longer hold
        elif len(self.header_cache) < 64:
            self.header_cache[block] = headers
        return headers

    def _open_or_trail(self, sid: int, flags: int, headers: list[tuple[str, str]]) -> None:
        stream = self.streams.get(sid)
        if stream is not None:   # trailers from the client: must end the stream
            if stream.remote_closed:
                raise ConnectionError_(STREAM_CLOSED, "HEADERS on a half-closed stream")
            if not flags & END_STREAM:
                raise ConnectionError_(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._end_remote(stream)
            return
        if sid % 2 == 0 or sid <= self.last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"stream {sid} is not a new client stream")
        self.last_stream = sid
        if self.going_away:
            self.write(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        if len(self.streams) >= self.max_streams:
            self.write(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        stream = Stream(self, sid)
        self.streams[sid] = stream
        stream.remote_closed = bool(flags & END_STREAM)   # known before open, so a refusal need not reset
        handler = stream.handler = self.router.open(stream, headers)
        if flags & END_STREAM:
            if stream.handler is not None:
                handler.on_end()
            self.maybe_forget(stream)
        elif self.idle_body_timeout and not stream.local_closed:
            stream.body_timer = self.loop.call_later(self.idle_body_timeout, self._body_stalled, stream)

    def _body_stalled(self, stream: Stream) -> None:
        stream.body_timer = None
        if not stream.remote_closed and self.streams.get(stream.id) is stream and stream.handler is not None \
                and getattr(stream.handler, "unary", True):
            # A unary request that has not arrived whole in time: the slow-client bound of HTTP/2.
            self._abort(stream, CANCEL)

    def _end_remote(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.body_timer is not None:
            stream.body_timer.cancel()
            stream.body_timer = None
        handler = stream.handler
        if handler is not None:
            handler.on_end()
        self.maybe_forget(stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        # Flow control counts the whole frame, padding included, even for streams we no longer track.
        self.recv_unacked += len(payload)
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.recv_unacked)))
            self.recv_unacked = 0
        body = self._unpad(flags, payload)
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            # A stream we answered and reset: frames already in flight are dropped (RFC 9113 §5.4.2),
            # not answered one RST_STREAM each.
            return
        if len(body) < len(payload):
            stream.consumed(len(payload) - len(body))   # padding reaches no handler: give its window back now
        if stream.handler is not None and body:
            stream.handler.on_data(body)
        if flags & END_STREAM:
            self._end_remote(stream)
        elif stream.body_timer is not None and self.idle_body_timeout:
            stream.body_timer.cancel()   # progress: the stall timer starts again
            stream.body_timer = self.loop.call_later(self.idle_body_timeout, self._body_stalled, stream)


def encode_literal(name: str, value: str | bytes) -> bytes:
    """An HPACK "literal header field without indexing — new name" (never Huffman, never indexed), so
    responses never touch the peer's dynamic table and can be precomputed."""
    n = name.encode()
    v = value.encode() if isinstance(value, str) else value
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def _hpack_int(value: int, prefix: int) -> bytes:
    top = (1 << prefix) - 1
    if value < top:
        return bytes((value,))
    out = bytearray((top,))
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

