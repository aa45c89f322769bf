"""An h2spec-style battery at the gRPC port: each case sends one protocol violation as raw frames and
reads what the server answers. Our engine must end the stream (RST_STREAM) or the connection (GOAWAY)
with the code RFC 9113 names for it; grpcio's server (grpc-core) must refuse it too, with whatever code
grpc-core picks (where it differs from the RFC's, the case says so). Every case runs on a fresh
connection; both servers must end the battery alive, with no traceback in their log."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pytest

from tests.security.h2wire import (
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    EMPTY_MESSAGE,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Answer,
    Conn,
    block,
    call,
    frame,
    request_fields,
    settings,
)
from tests.support import ServerProcess, copy_repository

Case = Callable[[Conn], int]   # sends the violation, returns the stream id it concerns (0: the connection)


def _open(conn: Conn, sid: int = 1, fields: list[tuple[str, str]] | None = None, *, end: bool = False) -> None:
    conn.send(frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, block(fields or request_fields())))


def _raw(data: bytes, sid: int = 0) -> Case:
    def case(conn: Conn) -> int:
        conn.send(data)
        return sid
    return case


def _headers_with(fields: list[tuple[str, str]]) -> Case:
    def case(conn: Conn) -> int:
        _open(conn, 1, fields)
        conn.send(frame(DATA, END_STREAM, 1, EMPTY_MESSAGE))
        return 1
    return case


def _closed_stream_headers(conn: Conn) -> int:
    assert call(conn, 1).get("grpc-status") == "0"
    conn.answer = Answer()
    _open(conn, 1, end=True)
    return 1


def _lower_stream_id(conn: Conn) -> int:
    assert call(conn, 5).get("grpc-status") == "0"
    conn.answer = Answer()
    _open(conn, 3, end=True)
    return 3


def _on_open_stream(*frames: bytes) -> Case:
    def case(conn: Conn) -> int:
        _open(conn, 1)
        conn.send(b"".join(frames))
        return 1
    return case


def _data_after_end_stream(conn: Conn) -> int:
    _open(conn, 1)
    conn.send(frame(DATA, END_STREAM, 1, EMPTY_MESSAGE) + frame(DATA, 0, 1, EMPTY_MESSAGE))
    return 1


def _trailers(fields: list[tuple[str, str]], flags: int) -> Case:
    def case(conn: Conn) -> int:
        _open(conn, 1)
        conn.send(frame(DATA, 0, 1, EMPTY_MESSAGE) + frame(HEADERS, END_HEADERS | flags, 1, block(fields)))
        return 1
    return case


FIELDS = request_fields()
WITHOUT_PATH = [f for f in FIELDS if f[0] != ":path"]
# name -> (case, the code RFC 9113 names)
CASES: dict[str, tuple[Case, int]] = {
    # §3.4 connection preface
    "bad preface": (_raw(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n" + settings()), PROTOCOL_ERROR),
    "first frame not SETTINGS": (_raw(PREFACE + frame(PING, 0, 0, b"12345678")), PROTOCOL_ERROR),
    # frames on stream 0 that need a stream, and the reverse (§6.x)
    "DATA on stream 0": (_raw(frame(DATA, 0, 0, b"x")), PROTOCOL_ERROR),
    "HEADERS on stream 0": (_raw(frame(HEADERS, END_HEADERS, 0, block(FIELDS))), PROTOCOL_ERROR),
    "RST_STREAM on stream 0": (_raw(frame(RST_STREAM, 0, 0, b"\0\0\0\0")), PROTOCOL_ERROR),
    "PRIORITY on stream 0": (_raw(frame(PRIORITY, 0, 0, b"\0\0\0\0\x10")), PROTOCOL_ERROR),
    "SETTINGS on a stream": (_raw(frame(SETTINGS, 0, 1, b"")), PROTOCOL_ERROR),
    "PING on a stream": (_raw(frame(PING, 0, 1, b"12345678")), PROTOCOL_ERROR),
    # stream states (§5.1)
    "DATA on an idle stream": (_raw(frame(DATA, 0, 1, EMPTY_MESSAGE)), PROTOCOL_ERROR),
    "RST_STREAM on an idle stream": (_raw(frame(RST_STREAM, 0, 1, b"\0\0\0\x08")), PROTOCOL_ERROR),
    "WINDOW_UPDATE on an idle stream": (_raw(frame(WINDOW_UPDATE, 0, 1, b"\0\0\0\x01")), PROTOCOL_ERROR),
    "HEADERS on a closed stream": (_closed_stream_headers, STREAM_CLOSED),
    "HEADERS on an even stream id": (_raw(frame(HEADERS, END_HEADERS, 2, block(FIELDS)), 2), PROTOCOL_ERROR),
    "HEADERS on a lower stream id": (_lower_stream_id, PROTOCOL_ERROR),
    "DATA after END_STREAM": (_data_after_end_stream, STREAM_CLOSED),
    # flow control (§6.9)
    "WINDOW_UPDATE of 0 on the connection": (_raw(frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0")), PROTOCOL_ERROR),
    "WINDOW_UPDATE of 0 on a stream": (_on_open_stream(frame(WINDOW_UPDATE, 0, 1, b"\0\0\0\0")), PROTOCOL_ERROR),
    "connection window over 2^31-1": (_raw(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1))),
                                      FLOW_CONTROL_ERROR),
    "stream window over 2^31-1": (_on_open_stream(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1))),
                                  FLOW_CONTROL_ERROR),
    # frame sizes (§4.2, §6.x)
    "frame over SETTINGS_MAX_FRAME_SIZE": (_raw(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"\0" * 64),
                                           FRAME_SIZE_ERROR),
    "PING of 7 bytes": (_raw(frame(PING, 0, 0, b"1234567")), FRAME_SIZE_ERROR),
    "RST_STREAM of 3 bytes": (_on_open_stream(frame(RST_STREAM, 0, 1, b"\0\0\0")), FRAME_SIZE_ERROR),
    "WINDOW_UPDATE of 3 bytes": (_raw(frame(WINDOW_UPDATE, 0, 0, b"\0\0\x01")), FRAME_SIZE_ERROR),
    "PRIORITY of 4 bytes": (_on_open_stream(frame(PRIORITY, 0, 1, b"\0\0\0\0")), FRAME_SIZE_ERROR),
    "padding longer than DATA": (_on_open_stream(frame(DATA, PADDED, 1, b"\x09abc")), PROTOCOL_ERROR),
    # SETTINGS values (§6.5.2)
    "SETTINGS_ENABLE_PUSH 2": (_raw(settings((0x2, 2))), PROTOCOL_ERROR),
    "SETTINGS_INITIAL_WINDOW_SIZE 2^31": (_raw(settings((0x4, 2**31))), FLOW_CONTROL_ERROR),
    "SETTINGS_MAX_FRAME_SIZE 16383": (_raw(settings((0x5, 16383))), PROTOCOL_ERROR),
    "SETTINGS of 5 bytes": (_raw(frame(SETTINGS, 0, 0, b"\0\x01\0\0\0")), FRAME_SIZE_ERROR),
    "SETTINGS ACK with a payload": (_raw(frame(SETTINGS, 1, 0, b"\0\x01\0\0\0\0")), FRAME_SIZE_ERROR),
    # frames a client may not send, header blocks (§6.6, §6.10, §4.3)
    "PUSH_PROMISE from the client": (_on_open_stream(frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\x02" + block(FIELDS))),
                                     PROTOCOL_ERROR),
    "CONTINUATION without HEADERS": (_raw(frame(CONTINUATION, END_HEADERS, 1, block(FIELDS))), PROTOCOL_ERROR),
    "HEADERS interrupted by PING": (_raw(frame(HEADERS, 0, 1, block(FIELDS)) + frame(PING, 0, 0, b"12345678")),
                                    PROTOCOL_ERROR),
    "HPACK index out of range": (_raw(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\x0f"), 1), COMPRESSION_ERROR),
    "PRIORITY depending on itself": (_raw(frame(PRIORITY, 0, 1, b"\0\0\0\x01\x10"), 1), PROTOCOL_ERROR),
    "HEADERS depending on itself": (_raw(frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\0\0\0\x01\x10" + block(FIELDS)), 1),
                                    PROTOCOL_ERROR),
    # requests (§8.1, §8.2, §8.3)
    "uppercase header name": (_headers_with([*FIELDS, ("X-Upper", "1")]), PROTOCOL_ERROR),
    "connection-specific header": (_headers_with([*FIELDS, ("connection", "keep-alive")]), PROTOCOL_ERROR),
    "te other than trailers": (_headers_with([f if f[0] != "te" else ("te", "gzip") for f in FIELDS]),
                               PROTOCOL_ERROR),
    "missing :path": (_headers_with(WITHOUT_PATH), PROTOCOL_ERROR),
    "duplicated :path": (_headers_with([*FIELDS[:3], (":path", "/x"), *FIELDS[3:]]), PROTOCOL_ERROR),
    "pseudo-header after a regular one": (_headers_with([*FIELDS[:2], ("x-a", "1"), *FIELDS[2:]]), PROTOCOL_ERROR),
    "unknown pseudo-header": (_headers_with([*FIELDS, (":foo", "1")]), PROTOCOL_ERROR),
    "response pseudo-header in a request": (_headers_with([*FIELDS, (":status", "200")]), PROTOCOL_ERROR),
    "empty header name": (_headers_with([*FIELDS, ("", "x")]), PROTOCOL_ERROR),
    "trailers without END_STREAM": (_trailers([("x-t", "1")], 0), PROTOCOL_ERROR),
    "pseudo-header in trailers": (_trailers([(":path", "/x")], END_STREAM), PROTOCOL_ERROR),
}


# What grpc-core (grpcio 1.85, as installed) lets through, seen with this battery: not our engine's business,
# listed so that a grpcio upgrade that starts refusing them is noticed by whoever updates this table.
GRPC_CORE_SERVES: dict[str, str] = {
    "DATA on stream 0": "neither resets nor closes within 3 s",
    "HEADERS on stream 0": "neither resets nor closes within 3 s",
    "RST_STREAM on stream 0": "neither resets nor closes within 3 s",
    "PRIORITY on stream 0": "neither resets nor closes within 3 s",
    "PING on a stream": "neither resets nor closes within 3 s",
    "DATA on an idle stream": "neither resets nor closes within 3 s",
    "RST_STREAM on an idle stream": "neither resets nor closes within 3 s",
    "WINDOW_UPDATE on an idle stream": "neither resets nor closes within 3 s",
    "HEADERS on a closed stream": "neither resets nor closes within 3 s",
    "HEADERS on an even stream id": "neither resets nor closes within 3 s",
    "HEADERS on a lower stream id": "neither resets nor closes within 3 s",
    "DATA after END_STREAM": "answers the call as if it were valid",
    "connection window over 2^31-1": "neither resets nor closes within 3 s",
    "stream window over 2^31-1": "neither resets nor closes within 3 s",
    "PRIORITY of 4 bytes": "neither resets nor closes within 3 s",
    "PUSH_PROMISE from the client": "neither resets nor closes within 3 s",
    "PRIORITY depending on itself": "neither resets nor closes within 3 s",
    "HEADERS depending on itself": "neither resets nor closes within 3 s",
    "connection-specific header": "answers the call as if it were valid",
    "pseudo-header after a regular one": "answers the call as if it were valid",
    "response pseudo-header in a request": "answers the call as if it were valid",
    "pseudo-header in trailers": "answers the call as if it were valid",
}


@pytest.fixture(scope="module", params=["h2", "grpcio"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    repo = copy_repository(tmp_path_factory.mktemp(f"battery-{request.param}") / "repo", ["add_sub"])
    proc = ServerProcess(repo, extra_args=["--grpc-engine", request.param]).start()
    yield request.param, proc
    conn = Conn(proc.grpc_addr)
    try:
        assert call(conn, 1).get("grpc-status") == "0", "the server no longer serves after the battery"
    finally:
        conn.close()
        proc.stop()
    assert "Traceback" not in proc.log()


def refused(answer: Answer, sid: int) -> bool:
    """Refused in some way: RST_STREAM or GOAWAY with an error, the connection closed, or (grpc-core's way
    for malformed requests) an HTTP status other than 200 or a gRPC error status."""
    head = answer.headers(sid) if sid else {}
    return (answer.refused(sid) not in (None, 0) or answer.closed
            or head.get(":status", "200") != "200" or head.get("grpc-status", "0") != "0")


@pytest.mark.parametrize("name", list(CASES))
def test_violation_is_answered_with_the_rfc_code(engine: tuple[str, ServerProcess], name: str) -> None:
    kind, proc = engine
    case, code = CASES[name]
    if kind == "grpcio" and name in GRPC_CORE_SERVES:
        pytest.skip(f"grpc-core serves this: {GRPC_CORE_SERVES[name]}")
    conn = Conn(proc.grpc_addr, preface=not name.startswith(("bad preface", "first frame")))
    try:
        sid = case(conn)
        if kind == "h2":
            answer = conn.ended(sid) if sid else conn.read(stop=lambda a: a.goaway is not None)
        else:
            answer = conn.read(stop=lambda a: refused(a, sid))
    finally:
        conn.close()
    if kind == "h2":
        got = answer.refused(sid) if sid else answer.goaway
        assert got == code, f"{name}: expected code {code}, got {got} ({answer.frames[-3:]})"
    else:   # grpc-core's codes differ from the RFC's in places, and it often just closes: any refusal
        assert refused(answer, sid), f"{name}: grpcio served it: {answer.frames[-3:]}"
