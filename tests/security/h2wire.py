"""Raw HTTP/2 at the gRPC port for the security tests: frames built by hand (what no well-behaved client
library would send), the server's answer read back frame by frame."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB
LIVE = "/inference.GRPCInferenceService/ServerLive"
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", sid) + payload


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def request_fields(path: str = LIVE, **extra: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra.items()]


def literal(name: str | bytes, value: str | bytes) -> bytes:
    """HPACK literal without indexing, new name (RFC 7541 §6.2.2), no Huffman: any bytes at all."""
    n = name.encode() if isinstance(name, str) else name
    v = value.encode() if isinstance(value, str) else value
    return b"\x00" + _int(len(n), 7) + n + _int(len(v), 7) + v


def _int(value: int, prefix: int, first: int = 0) -> bytes:
    top = (1 << prefix) - 1
    if value < top:
        return bytes((first | value,))
    out = bytearray((first | top,))
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def table_size_update(size: int) -> bytes:
    return _int(size, 5, 0x20)


def block(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(literal(k, v) for k, v in fields)


@dataclass
class Answer:
    """What the server sent on one connection, frame by frame."""

    frames: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    fields: dict[int, dict[str, str]] = field(default_factory=dict)   # HEADERS decoded, merged per stream
    closed: bool = False

    @property
    def goaway(self) -> int | None:
        codes = [struct.unpack(">I", p[4:8])[0] for k, _, _, p in self.frames if k == GOAWAY and len(p) >= 8]
        return codes[-1] if codes else None

    def rst(self, sid: int) -> int | None:
        codes = [struct.unpack(">I", p)[0] for k, _, s, p in self.frames if k == RST_STREAM and s == sid]
        return codes[0] if codes else None

    def headers(self, sid: int) -> dict[str, str]:
        return self.fields.get(sid, {})

    def refused(self, sid: int) -> int | None:
        """The code the stream or the connection was ended with, stream first."""
        code = self.rst(sid)
        return code if code is not None else self.goaway


class Conn:
    """One raw connection: preface and empty SETTINGS sent on open unless told otherwise."""

    def __init__(self, addr: str, *, preface: bool = True) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buf = bytearray()
        self.send_failed = False
        self.answer = Answer()
        self._decoder = hpack.Decoder()
        if preface:
            self.send(PREFACE + settings())

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.send_failed = True

    def read(self, until: float = 3.0, *, stop: object = None) -> Answer:
        """Read frames for up to `until` seconds, or until the connection closes, or `stop(answer)`."""
        deadline = time.monotonic() + until
        while not self.answer.closed and time.monotonic() < deadline:
            if stop is not None and stop(self.answer):  # type: ignore[operator]
                break
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.answer.closed = True
                break
            self.buf += chunk
            while len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + length:
                    break
                kind, flags = self.buf[3], self.buf[4]
                sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                payload = bytes(self.buf[9:9 + length])
                del self.buf[:9 + length]
                self.answer.frames.append((kind, flags, sid, payload))
                if kind == HEADERS:   # one decoder per connection, in order: the server may index
                    if flags & PADDED:
                        payload = payload[1:len(payload) - payload[0]]
                    if flags & PRIORITY_FLAG:
                        payload = payload[5:]
                    self.answer.fields.setdefault(sid, {}).update(
                        {str(k): str(v) for k, v in self._decoder.decode(payload)})
                if kind == SETTINGS and not flags & ACK:
                    self.send(frame(SETTINGS, ACK, 0))
        return self.answer

    def ended(self, sid: int, until: float = 3.0) -> Answer:
        """Read until stream sid is answered (END_STREAM or RST_STREAM) or the connection ends."""
        def done(a: Answer) -> bool:
            return a.goaway is not None or a.rst(sid) is not None or any(
                s == sid and k in (HEADERS, DATA) and f & END_STREAM for k, f, s, _ in a.frames)
        return self.read(until, stop=done)

    def close(self) -> None:
        self.sock.close()


def call(conn: Conn, sid: int, fields: list[tuple[str, str]] | None = None, body: bytes = EMPTY_MESSAGE) -> dict[str, str]:
    """A whole unary call on stream sid; the trailers (or trailers-only headers) it got."""
    conn.send(frame(HEADERS, END_HEADERS, sid, block(fields or request_fields()))
              + frame(DATA, END_STREAM, sid, body))
    answer = conn.ended(sid)
    return answer.headers(sid)
