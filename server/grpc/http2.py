"""HTTP/2 (RFC 9113) for the gRPC port: the `h2` library's state machine under one asyncio.Protocol per
connection, no gRPC in it.

h2 parses frames, keeps stream states and flow-control accounting, validates requests (RFC 9113 §8) and
runs HPACK. This module adds what h2 leaves to a server: bounds on hostile peers (header blocks, request
bodies that outlive their deadline, reset and control-frame floods answered GOAWAY ENHANCE_YOUR_CALM),
receive windows reopened only as the layer above consumes data, stream-level answers where h2 would end
the whole connection (a malformed request, too many streams), and a catch-all so that no input ends a
connection without a GOAWAY or a RST_STREAM and one line in the log.

The gRPC layer above (front.py) sees a `Stream`: request headers, request bytes, and `send_headers` /
`send_data` / `send_unary`, which queue under the peer's windows. Header blocks we send are encoded once
by front.py (literals, never indexed) and passed through h2 as they are. Everything h2 queued in one event
loop turn goes out in one transport.write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import hpack
import hpack.exceptions
from h2.connection import ConnectionInputs
from h2.errors import ErrorCodes
from h2.stream import H2Stream, StreamInputs
from hpack.hpack import encode_integer
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

log = logging.getLogger("modelbridge.grpc")

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB

# What we announce. A large receive window lets a client send a whole request without waiting for
# WINDOW_UPDATEs; what a stream holds unread is bounded by it (front.py acknowledges data only as its
# handler consumes messages), and the connection window bounds the sum over streams.
RECV_FRAME = 1 << 20
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 24
MAX_HEADER_LIST = 64 * 1024    # decoded, per RFC 9113 §6.5.2 sizes; past it HPACK stops mid-block: GOAWAY
MAX_HEADER_BLOCK = 128 * 1024  # encoded, HEADERS + CONTINUATION (h2 alone allows 64 frames of 1 MiB)
# Floods (CVE-2023-44487 rapid reset, CVE-2019-9512/9515/9518 ping/settings/empty-frame floods): per
# connection and second, client RST_STREAMs plus streams we reset for client errors, and control frames
# that do no work (PING, SETTINGS, PRIORITY, unknown types, empty DATA, WINDOW_UPDATEs nothing waited on).
MAX_RESETS_PER_SEC = 200
MAX_CONTROL_PER_SEC = 2000
CONTROL_PER_REQUEST = 4   # and this many more per request in that second (grpc-core acknowledges, pings)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LINGER = 1.0   # seconds a connection ended on an error keeps reading (and dropping) before it closes
LINGER_BYTES = 1 << 20   # or until it read this much
_RAW = b"\x00raw"   # a header "name" that carries an already encoded block through h2.send_headers
_UNCOUNTED_RESETS = frozenset({NO_ERROR, CANCEL})   # codes of our own RSTs that are not the client's fault


class Handler(Protocol):
    """What the layer above attaches to a stream when its request headers are complete."""

    def on_data(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self) -> None: ...


class Router(Protocol):
    def open(self, stream: Stream, headers: list[tuple[bytes, bytes]]) -> Handler:
        """`headers` as h2 decoded and validated them, bytes (the router decodes what it reads)."""
        ...


class _CompressionError(h2.exceptions.ProtocolError):
    error_code = ErrorCodes.COMPRESSION_ERROR


class _Decoder(hpack.Decoder):
    """Remembers whether the last block decoded whole (the dynamic table then matches the peer's, so an
    error after it may end one stream), calls a bad block COMPRESSION_ERROR as RFC 9113 §4.3 does, and
    decodes a repeated block once.

    Clients repeat a request's header block byte for byte once its fields are in the dynamic table, and
    pure-Python HPACK is a large part of a call's cost. A block decodes the same way again while the table
    is unchanged, so: a block that changed the table (an insertion, a resize) is never cached and empties
    the cache; a block that starts with a table-size update is never cached either, even when the update
    was a no-op, because replaying it from the cache would skip it when it no longer is (issue 13 item 6).
    """

    ok = False
    hit = False

    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[bytes, list[Any]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        self.ok = False
        cached = self.cache.get(data) if raw else None
        if cached is not None:
            self.ok = self.hit = True
            return list(cached)
        self.hit = False
        table = self.header_table
        entries = table.dynamic_entries
        before = (len(entries), id(entries[0]) if entries else 0, table.maxsize)
        try:
            headers = super().decode(data, raw)
        except hpack.exceptions.OversizedHeaderListError:
            raise
        except (hpack.exceptions.HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise _CompressionError(f"bad header block: {exc}") from None
        self.ok = True
        if (len(entries), id(entries[0]) if entries else 0, table.maxsize) != before:
            self.cache.clear()
        elif raw and data and data[0] & 0xE0 != 0x20 and len(self.cache) < 64:
            self.cache[data] = list(headers)
        return headers


class _Encoder(hpack.Encoder):
    """Passes front.py's precomputed blocks (literals, never indexed) through, with the table-size update
    RFC 7541 §4.2 requires first after the peer changed SETTINGS_HEADER_TABLE_SIZE."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if len(headers) == 1 and headers[0][0] == _RAW:
            block: bytes = headers[0][1]
            if self.header_table.resized:
                self.header_table.resized = False
                return self._encode_table_size_change() + block
            return block
        return super().encode(headers, huffman)


class _FrameBuffer(h2.frame_buffer.FrameBuffer):
    """Refuses an oversized frame from its header (h2 would first buffer all of it, up to 16 MiB), and
    bounds a header block while it accumulates over CONTINUATION frames (h2 counts only frames)."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9:
            length = data[0] << 16 | data[1] << 8 | data[2]
            if length > self.max_frame_size:
                raise h2.exceptions.FrameTooLargeError(f"frame of {length} bytes")
            if length and data[3] == 0x4 and data[4] & 0x1:   # RFC 9113 §6.5 (h2 says PROTOCOL_ERROR)
                raise h2.exceptions.FrameDataMissingError("SETTINGS ACK with a payload")
        return super().__next__()

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        out = super()._update_header_buffer(f)
        if self._headers_buffer and sum(len(x.data) for x in self._headers_buffer) > MAX_HEADER_BLOCK:
            raise h2.exceptions.DenialOfServiceError(f"header block over {MAX_HEADER_BLOCK} bytes")
        return out


class _H2(h2.connection.H2Connection):
    """h2's connection with three server decisions changed, each where h2 would end the whole connection
    for what RFC 9113 lets a server answer on one stream or keep serving through."""

    def __init__(self, max_streams: int) -> None:
        super().__init__(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True,
            normalize_inbound_headers=False, validate_outbound_headers=False, normalize_outbound_headers=False))
        self.encoder = _Encoder()
        self.decoder = self.hpack_in = _Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_LIST
        self.max_streams = max_streams
        self.validated: set[bytes] = set()   # cached request blocks that passed h2's validation
        self.resets = 0   # RST_STREAMs we sent for the client's faults (the rate limit reads it)
        self.stray = 0    # RST_STREAM(STREAM_CLOSED)s h2 answered frames on closed streams with
        self.incoming_buffer = _FrameBuffer(server=True)
        self.incoming_buffer.max_frame_size = RECV_FRAME

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        sid = frame.stream_id
        if len(frame.data) > MAX_HEADER_BLOCK:
            raise h2.exceptions.DenialOfServiceError(f"header block of {len(frame.data)} bytes")
        if len(self.streams) >= self.max_streams and sid not in self.streams \
                and sid > self.highest_inbound_stream_id and sid % 2 and self.open_inbound_streams >= self.max_streams:
            # Over SETTINGS_MAX_CONCURRENT_STREAMS: a stream error (RFC 9113 §5.1.2), not h2's GOAWAY. The
            # block is still decoded so the HPACK table stays the peer's.
            self.hpack_in.decode(frame.data, raw=True)
            self.highest_inbound_stream_id = sid
            self._closed_streams[sid] = h2.connection.StreamClosedBy.SEND_RST_STREAM
            return [RstStreamFrame(sid, error_code=REFUSED_STREAM)], []
        self.hpack_in.ok = False
        # A request block that decoded from the cache was validated the first time it came, as a request:
        # the same fields get the same verdict (trailers, on an existing stream, are always validated).
        config = self.config
        request = sid not in self.streams
        skip = request and frame.data in self.validated and frame.data in self.hpack_in.cache
        if not skip:
            self.validated.discard(frame.data)
        try:
            if skip:
                config.validate_inbound_headers = False
            out = super()._receive_headers_frame(frame)
            if request and not skip and self.hpack_in.ok and frame.data in self.hpack_in.cache:
                self.validated.add(frame.data)
            return out
        except h2.exceptions.ProtocolError as exc:
            stream = self.streams.get(sid)
            if type(exc) is not h2.exceptions.ProtocolError or not self.hpack_in.ok or stream is None:
                raise
            # Decoded whole but malformed (RFC 9113 §8.1.1, §8.2): a stream error, the connection lives on.
            log.info("gRPC stream %d refused: %s", sid, str(exc)[:200])
            if not stream.closed:
                self.reset_stream(sid, PROTOCOL_ERROR)
            return [], [h2.events.StreamReset(stream_id=sid, error_code=ErrorCodes.PROTOCOL_ERROR, remote_reset=False)]
        finally:
            config.validate_inbound_headers = True
            if len(self.validated) > len(self.hpack_in.cache):   # the cache was emptied: so is this
                self.validated.intersection_update(self.hpack_in.cache)

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        # h2 4.4's _receive_frame, less its first line: `logger.trace("Received frame: %s", repr(frame))`
        # builds the frame's repr eagerly even for the no-op logger, a tenth of the layer's cost per call.
        # The rest is h2's code unchanged (h2 is pinned ==4.4.*; re-check this copy when it moves).
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        # h2 would close its state machine at once; RFC 9113 §6.8 lets streams the peer already opened
        # finish, so only the event goes up (the layer above then opens nothing more).
        event = h2.events.ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        for f in frames:
            if f.__class__ is RstStreamFrame:
                code = f.error_code  # type: ignore[attr-defined]
                if code == STREAM_CLOSED:
                    self.stray += 1
                elif code not in _UNCOUNTED_RESETS:
                    self.resets += 1
        super()._prepare_for_sending(frames)

    # The response hot path. h2's send_headers/send_data cost more than the rest of a small call (header
    # list re-encoding, validation flags, frame objects, serialization); these do the same state changes
    # through h2's own state machines and flow-control counters, and write the frames' bytes directly.
    def headers_bytes(self, stream: H2Stream, block: bytes, end_stream: bool) -> bytes:
        if self.encoder.header_table.resized:
            block = self.encoder.encode([(_RAW, block)])
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        sid = stream.stream_id
        limit = self.max_outbound_frame_size
        if len(block) <= limit:
            return _frame(0x1, 0x5 if end_stream else 0x4, sid, block)   # HEADERS, END_HEADERS (+END_STREAM)
        parts = [block[i:i + limit] for i in range(0, len(block), limit)]   # HEADERS, then CONTINUATIONs
        return _frame(0x1, 0x1 if end_stream else 0x0, sid, parts[0]) + b"".join(
            _frame(0x9, 0x4 if i == len(parts) - 1 else 0x0, sid, part) for i, part in enumerate(parts) if i)

    def data_bytes(self, stream: H2Stream, payload: bytes) -> bytes:
        """One DATA frame the caller checked against both windows and the peer's frame size."""
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        n = len(payload)
        stream.outbound_flow_control_window -= n
        self.outbound_flow_control_window -= n
        return _frame(0x0, 0, stream.stream_id, payload)

    def room(self, stream: H2Stream) -> int:
        """What one DATA frame may carry now: both send windows and the peer's frame size."""
        return min(self.outbound_flow_control_window, stream.outbound_flow_control_window, self.max_outbound_frame_size)

    def goaway_frame(self, code: int, message: str) -> None:
        """A GOAWAY that leaves h2's state open, so streams below last_stream_id can still finish."""
        super()._prepare_for_sending([GoAwayFrame(0, last_stream_id=self.highest_inbound_stream_id,
                                                  error_code=code, additional_data=message.encode()[:200])])


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
        "remote_closed",
    )

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self.id = stream_id
        self.conn = conn
        self.handler: Handler | None = None
        self.pending: deque[bytes] = deque()   # DATA payloads waiting for window
        self.pending_bytes = 0
        self.end_after_pending: bytes | None = None   # the trailers' block, sent after the data
        self.remote_closed = False
        self.local_closed = False
        self.drained: asyncio.Event | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    # ---- sending (called by the layer above) ----
    def _h2(self) -> H2Stream | None:
        """h2's side of this stream, or None (and the stream forgotten) if h2 has closed it already: the
        peer reset it in the same read that carried its request."""
        stream = self.conn.h2.streams.get(self.id)
        if stream is None or stream.closed:
            self.local_closed = self.remote_closed = True
            self.pending.clear()
            self.pending_bytes = 0
            self.conn.maybe_forget(self)
            return None
        return stream

    def send_headers(self, block: bytes, *, end_stream: bool = False) -> None:
        if self.local_closed:
            return
        if self.pending:   # trailers must follow the data still queued
            self.end_after_pending = block
            return
        stream = self._h2()
        if stream is None:
            return
        conn = self.conn
        conn.h2._data_to_send += conn.h2.headers_bytes(stream, block, end_stream)
        if end_stream:
            self.local_closed = True
            conn.maybe_forget(self)
        conn.flush_soon()

    def send_data(self, payload: bytes) -> None:
        """Queue DATA (already gRPC-framed) and write what the windows allow."""
        if self.local_closed or not payload:
            return
        stream = self._h2()
        if stream is None:
            return
        h = self.conn.h2
        if not self.pending and len(payload) <= h.room(stream):
            h._data_to_send += h.data_bytes(stream, payload)
            self.conn.flush_soon()
            return
        self.pending.append(payload)
        self.pending_bytes += len(payload)
        self.flush()

    def send_unary(self, head: bytes, message: bytes, trailers: bytes) -> None:
        """Response headers, one DATA and trailers in one write when the windows allow (the hot path)."""
        if self.local_closed:
            return
        stream = self._h2()
        if stream is None:
            return
        conn = self.conn
        h = conn.h2
        if len(message) <= h.room(stream):
            self.local_closed = True
            h._data_to_send += h.headers_bytes(stream, head, False) + h.data_bytes(stream, message) \
                + h.headers_bytes(stream, trailers, True)
            conn.maybe_forget(self)
            conn.flush_soon()
            return
        self.send_headers(head)
        self.send_data(message)
        self.send_headers(trailers, end_stream=True)

    def flush(self) -> None:
        conn = self.conn
        stream = self._h2()
        if stream is None:
            return
        h = conn.h2
        out = []
        while self.pending:
            room = h.room(stream)
            if room <= 0:
                break
            chunk = self.pending[0]
            if len(chunk) > room:
                piece, self.pending[0] = chunk[:room], chunk[room:]
            else:
                piece = self.pending.popleft()
            self.pending_bytes -= len(piece)
            out.append(h.data_bytes(stream, piece))
        if not self.pending and self.end_after_pending is not None:
            block, self.end_after_pending = self.end_after_pending, None
            out.append(h.headers_bytes(stream, block, True))
            self.local_closed = True
        if out:
            h._data_to_send += b"".join(out)
            conn.flush_soon()
        if not self.pending:
            conn.blocked.discard(self)
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
        conn = self.conn
        try:
            conn.h2.reset_stream(self.id, code)
        except h2.exceptions.StreamClosedError:
            pass   # h2 already closed it (the peer reset it in the same read)
        conn.maybe_forget(self)
        conn.flush_soon()

    def consumed(self, n: int) -> None:
        """The layer above took n bytes of body: h2 reopens the windows (in batches of half a window). Once
        the request has ended only the connection window matters: that credit is summed and given once per
        read (unary calls, the common case, all end so)."""
        conn = self.conn
        if not n or conn.closed:
            return
        if self.remote_closed or conn.ending == self.id:
            conn.credit += n
            if not conn.receiving:
                conn.flush_soon()
        else:
            conn.h2.acknowledge_received_data(n, self.id)


class Connection(asyncio.Protocol):
    def __init__(self, router: Router, *, max_streams: int, idle_body_timeout: float,
                 preface_timeout: float = 10.0, on_close: Callable[[Connection], None] | None = None) -> None:
        self.router = router
        self.max_streams = max_streams
        self.body_timeout = idle_body_timeout
        self.preface_timeout = preface_timeout
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.h2 = _H2(max_streams)
        self.streams: dict[int, Stream] = {}
        self.blocked: set[Stream] = set()
        self.closed = False
        self.going_away = False
        self.dead = False   # closed by us on an error: nothing more is read
        self.credit = 0     # bytes consumed that only the connection window still has to get back
        self.ending = 0     # the stream whose last DATA frame is being delivered
        self.receiving = False   # inside data_received (it gives the credit at its end)
        self._lingered = 0
        self.peer: str = ""
        self._first = bytearray()   # the preface and the first frame's header, until both are checked
        self._checked = False
        self._flush_scheduled = False
        self._paused = False
        self._resume: asyncio.Future[None] | None = None
        self._preface_timer: asyncio.TimerHandle | None = None
        self._window_start = 0.0
        self._control = 0
        self._resets_seen = 0
        self._stray_seen = 0
        self._requests = 0
        self._opened: list[Stream] = []   # streams opened in this read that may need a body timer

    # ---- transport ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"ipv4:{peer[0]}:{peer[1]}"
        h = self.h2
        s = h2.settings.SettingCodes
        h.local_settings = h2.settings.Settings(client=False, initial_values={
            s.MAX_CONCURRENT_STREAMS: self.max_streams, s.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            s.MAX_FRAME_SIZE: RECV_FRAME, s.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST, s.ENABLE_PUSH: 0})
        h.initiate_connection()
        h.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        h.max_inbound_frame_size = RECV_FRAME
        self._window_start = self.loop.time()
        self.flush()
        self._preface_timer = self.loop.call_later(self.preface_timeout, self._preface_expired)

    def _preface_expired(self) -> None:
        if not self._checked:
            self.goaway(PROTOCOL_ERROR, "no HTTP/2 preface and SETTINGS in time")

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.credit:
            self._give_credit()
        data = self.h2.data_to_send()
        if data and not self.closed and self.transport is not None:
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Responses finished in the same loop turn (a dynamic batch) go out in one write, not one each;
        with nothing else in flight and nothing queued there is nothing to coalesce with, so no extra loop
        turn. Inside data_received nothing is written before the end of the read."""
        if self._flush_scheduled or self.receiving:
            return
        if len(self.streams) <= 1:
            self.flush()
        else:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def close_transport(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()

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
        for stream in list(self.streams.values()):
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
        self.blocked.discard(stream)
        handler, stream.handler = stream.handler, None
        if handler is not None:
            handler.on_reset()

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
        self.h2.goaway_frame(code, message)
        if code != NO_ERROR:
            if message:
                log.info("gRPC connection from %s closed: %s (%s)", self.peer or "?", message, _name(code))
            self._close_all()
        elif not self.streams:
            self.close_transport()
        else:
            self.flush()

    def _close_all(self) -> None:
        """After a GOAWAY for an error: drop every stream, then close the way RFC 9113 §5.4.1 wants the
        GOAWAY read: our side shut for writing, the peer's bytes read and dropped for a moment, so the
        kernel does not answer them with a TCP reset that destroys the GOAWAY before the peer reads it."""
        self.dead = True
        for stream in list(self.streams.values()):
            self._drop(stream)
        self.streams.clear()
        self.flush()
        transport = self.transport
        if transport is None:
            return
        if self._paused or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.loop.call_later(LINGER, transport.close)

    # ---- receiving ----
    def data_received(self, data: bytes) -> None:
        if self.closed or self.dead:
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES and self.transport is not None:
                self.transport.close()   # a peer still pushing after our GOAWAY: stop reading it now
            return
        if not self._checked:
            checked = self._check_preface(data)
            if checked is None:
                return
            data = checked
        h = self.h2
        self.receiving = True
        self._opened.clear()
        try:
            self._received(h, data)
        finally:
            self.receiving = False

    def _received(self, h: _H2, data: bytes) -> None:
        try:
            events = h.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the code RFC 9113 names for this error.
            self.going_away = True
            log.info("gRPC connection from %s closed: %s (%s)", self.peer or "?", str(exc)[:200],
                     _name(exc.error_code))
            self._close_all()
            return
        except Exception as exc:  # noqa: BLE001 - the catch-all: no input may end a connection silently
            log.warning("gRPC connection from %s closed: unexpected %s: %s", self.peer or "?",
                        type(exc).__name__, str(exc)[:200])
            self.goaway(INTERNAL_ERROR)
            return
        for event in events:
            try:
                self._event(event)
            except Exception as exc:  # noqa: BLE001 - one stream's failure is that stream's alone
                sid = getattr(event, "stream_id", 0)
                log.warning("gRPC stream %d from %s reset: unexpected %s: %s", sid, self.peer or "?",
                            type(exc).__name__, str(exc)[:200])
                stream = self.streams.get(sid) if sid else None
                if stream is None:
                    self.goaway(INTERNAL_ERROR)
                    return
                self._abort(stream, INTERNAL_ERROR)
            if self.closed or self.dead:
                return
        if h.resets - self._resets_seen > MAX_RESETS_PER_SEC or self._control + h.stray - self._stray_seen \
                > MAX_CONTROL_PER_SEC + CONTROL_PER_REQUEST * self._requests:
            self._rate_check()
            if self.dead:
                return
        if self._opened:
            self._start_body_timers()
        if self.credit:
            self._give_credit()
        self.flush()

    def _start_body_timers(self) -> None:
        """The whole body must arrive by the deadline, counted from the read that carried the headers (not
        restarted by DATA: a body trickling one byte a second would outlive any per-frame timer). Most
        requests end in the read that opened them; they need no timer at all."""
        opened, self._opened = self._opened, []
        deadline = self.loop.time() + self.body_timeout
        for stream in opened:
            if not stream.remote_closed and not stream.local_closed and self.streams.get(stream.id) is stream:
                stream.body_timer = self.loop.call_at(deadline, self._body_expired, stream)

    def _check_preface(self, data: bytes) -> bytes | None:
        """h2 checks the preface; RFC 9113 §3.4 also wants SETTINGS as the first frame after it. Returns
        what to feed h2 once both are checked, None until then or when they are wrong."""
        first = self._first
        first += data
        if not PREFACE.startswith(bytes(first[:24])):
            self.goaway(PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs HTTP/2)")
            return None
        if len(first) < 24 + 9:
            return None
        if first[24 + 3] != 0x4:
            self.goaway(PROTOCOL_ERROR, "the first frame after the preface is not SETTINGS")
            return None
        self._checked = True
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        self._first = bytearray()
        return bytes(first)

    def _give_credit(self) -> None:
        """The connection-window part of h2's acknowledge_received_data, once for all ended streams."""
        h = self.h2
        increment = h._inbound_flow_control_window_manager.process_bytes(self.credit)
        self.credit = 0
        if increment:
            h._data_to_send += _frame(0x8, 0, 0, increment.to_bytes(4, "big"))   # WINDOW_UPDATE, as bytes

    def _rate_check(self) -> None:
        """Past either budget within the current second: GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §10.5)."""
        now = self.loop.time()
        resets = self.h2.resets - self._resets_seen
        control = self._control + self.h2.stray - self._stray_seen
        if now - self._window_start < 1.0:
            if resets > MAX_RESETS_PER_SEC:
                self.goaway(ENHANCE_YOUR_CALM, f"more than {MAX_RESETS_PER_SEC} stream resets in a second")
            elif control > MAX_CONTROL_PER_SEC + CONTROL_PER_REQUEST * self._requests:
                self.goaway(ENHANCE_YOUR_CALM, f"{control} control frames in a second for {self._requests} requests")
            return
        self._window_start = now
        self._resets_seen = self.h2.resets
        self._stray_seen = self.h2.stray
        self._control = 0
        self._requests = 0

    def _event(self, event: h2.events.Event) -> None:
        kind = event.__class__
        if kind is h2.events.DataReceived:
            self._data(event)  # type: ignore[arg-type]
        elif kind is h2.events.RequestReceived:
            self._request(event)  # type: ignore[arg-type]
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if stream is not None:
                self._end_remote(stream)
        elif kind is h2.events.WindowUpdated:
            sid = event.stream_id  # type: ignore[attr-defined]
            if sid == 0:
                if self.blocked:
                    self._unblock()
                    return
            else:
                stream = self.streams.get(sid)
                if stream is not None and stream.pending:
                    stream.flush()
                    return
            self._control += 1   # an update nothing waited on
        elif kind is h2.events.StreamReset:
            stream = self.streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
            if event.remote_reset:  # type: ignore[attr-defined]
                self.h2.resets += 1
            if stream is not None:
                stream.local_closed = stream.remote_closed = True
                self._drop(stream)
        elif kind is h2.events.RemoteSettingsChanged:
            self._control += 1
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:  # type: ignore[attr-defined]
                self._unblock()
        elif kind is h2.events.ConnectionTerminated:
            self.going_away = True   # the peer opens nothing more; answer what is open, then close
            if not self.streams:
                self.close_transport()
        elif kind is h2.events.TrailersReceived or kind is h2.events.SettingsAcknowledged:
            pass   # a gRPC request's trailers carry nothing we use; StreamEnded follows
        else:   # PING (h2 answers it), PRIORITY, unknown frame types, ACKs of our PINGs
            self._control += 1

    def _unblock(self) -> None:
        for stream in list(self.blocked):
            if self.h2.outbound_flow_control_window <= 0:
                break
            stream.flush()

    def _abort(self, stream: Stream, code: int) -> None:
        """Reset a stream from our side, its handler told first (reset() forgets the stream)."""
        self._drop(stream)
        stream.reset(code)

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        self._requests += 1
        if self.going_away:
            self.h2.reset_stream(sid, REFUSED_STREAM)
            return
        stream = Stream(self, sid)
        self.streams[sid] = stream
        ended = bool(event.stream_ended)
        stream.remote_closed = ended   # known before open, so a refusal need not reset
        handler = stream.handler = self.router.open(stream, event.headers or [])  # type: ignore[arg-type]
        if ended:
            if stream.handler is not None:
                handler.on_end()
            self.maybe_forget(stream)
        elif self.body_timeout and not stream.local_closed and getattr(handler, "unary", True):
            self._opened.append(stream)   # its body timer starts at the end of this read, if still needed

    def _body_expired(self, stream: Stream) -> None:
        stream.body_timer = None
        if not stream.remote_closed and self.streams.get(stream.id) is stream and stream.handler is not None:
            log.info("gRPC stream %d from %s reset: the request body did not arrive within %gs",
                     stream.id, self.peer or "?", self.body_timeout)
            self._abort(stream, CANCEL)
            self.flush()

    def _end_remote(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.body_timer is not None:
            stream.body_timer.cancel()
            stream.body_timer = None
        handler = stream.handler
        if handler is not None:
            handler.on_end()
        self.maybe_forget(stream)

    def _data(self, event: h2.events.DataReceived) -> None:
        data = event.data or b""
        size = event.flow_controlled_length or 0
        stream = self.streams.get(event.stream_id)  # type: ignore[arg-type]
        if stream is None or stream.handler is None or stream.remote_closed:
            self.credit += size   # answered or reset already: the bytes still count against the connection window
            return
        if not data and not event.stream_ended:
            self._control += 1   # an empty DATA frame does no work
        if event.stream_ended:
            self.ending = stream.id
        if size > len(data):
            stream.consumed(size - len(data))   # padding reaches no handler: give its window back now
        if data:
            stream.handler.on_data(data)
        self.ending = 0


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + stream_id.to_bytes(4, "big") + payload


def _name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def encode_literal(name: str, value: str | bytes) -> bytes:
    """An HPACK "literal header field without indexing — new name" (never Huffman, never indexed), so
    responses never touch the peer's dynamic table and can be precomputed."""
    n = name.encode()
    v = value.encode() if isinstance(value, str) else value
    return b"\x00" + encode_integer(len(n), 7) + n + encode_integer(len(v), 7) + v


