"""The gRPC port's limits against hostile HTTP/2 peers (issue 13's gRPC items), each driven with raw
frames: windows the client ignores, oversized metadata, a body trickling past its deadline, inputs that
used to raise, HPACK table resizes, trailers after our reset, malformed requests, reset and control-frame
floods. Memory is read from the server's /proc/PID/status. Every server must end with no traceback."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.grpc._generated import grpc_service_pb2 as pb
from tests.security.h2wire import (
    CANCEL,
    DATA,
    EMPTY_MESSAGE,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    HEADERS,
    NO_ERROR,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    RST_STREAM,
    Conn,
    block,
    call,
    frame,
    literal,
    request_fields,
    settings,
    table_size_update,
)
from tests.support import ServerProcess, copy_repository

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
INFER = "/inference.GRPCInferenceService/ModelInfer"


def rss_kib(proc: ServerProcess) -> int:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = copy_repository(tmp_path_factory.mktemp("h2limits") / "repo", ["add_sub"])
    proc = ServerProcess(repo, extra_args=["--body-timeout-secs", "2"]).start()
    yield proc
    assert proc.proc is not None and proc.proc.poll() is None
    proc.stop()
    assert "Traceback" not in proc.log()


def still_serves(addr: str) -> None:
    conn = Conn(addr)
    try:
        assert call(conn, 1).get("grpc-status") == "0"
    finally:
        conn.close()


def test_a_client_ignoring_our_windows_gets_flow_control_error_not_our_memory(server: ServerProcess) -> None:
    """Item 2: 200 MiB pushed into one ModelStreamInfer stream without waiting for WINDOW_UPDATE."""
    before = rss_kib(server)
    message = pb.ModelInferRequest(model_name="nope", raw_input_contents=[b"\0" * ((1 << 20) - 64)]).SerializeToString()
    data = frame(DATA, 0, 1, len(message).to_bytes(5, "big") + message)
    assert len(data) - 9 <= 1 << 20   # within the frame size we announce: only the window is ignored
    conn = Conn(server.grpc_addr)
    try:
        conn.send(frame(HEADERS, END_HEADERS, 1, block(request_fields(STREAM))))
        for _ in range(200):
            conn.send(data)
            if conn.send_failed:
                break
        answer = conn.read(until=10, stop=lambda a: a.goaway is not None)
    finally:
        conn.close()
    grown = rss_kib(server) - before
    assert grown < 48 * 1024, f"RSS grew {grown} KiB"
    assert answer.goaway == FLOW_CONTROL_ERROR, answer.frames[-3:]
    still_serves(server.grpc_addr)


def test_metadata_over_16_kib_is_resource_exhausted(server: ServerProcess) -> None:
    """Item 3: grpc-core's cap, answered on the stream; the connection carries on."""
    conn = Conn(server.grpc_addr)
    try:
        fields = request_fields(**{"x-big": "v" * 20_000})
        assert call(conn, 1, fields).get("grpc-status") == "8"   # RESOURCE_EXHAUSTED
        assert call(conn, 3).get("grpc-status") == "0"
    finally:
        conn.close()


def test_streams_with_large_headers_do_not_hold_memory(server: ServerProcess) -> None:
    """Item 3: 4 connections x 250 open streams x 50 KB of headers: refused at once, nothing kept."""
    before = rss_kib(server)
    value = "v" * 50_000
    conns = [Conn(server.grpc_addr) for _ in range(4)]
    try:
        for conn in conns:
            conn.send(b"".join(frame(HEADERS, END_HEADERS, sid, block(request_fields(STREAM, **{"x-big": value})))
                               for sid in range(1, 500, 2)))
        for conn in conns:
            conn.read(until=10, stop=lambda a: sum(1 for k, f, _, _ in a.frames if k == HEADERS and f & END_STREAM) >= 250)
        grown = rss_kib(server) - before
        assert grown < 40 * 1024, f"RSS grew {grown} KiB holding 1000 streams of 50 KB headers"
        for conn in conns:
            assert {a.get("grpc-status") for a in conn.answer.fields.values()} == {"8"}
    finally:
        for conn in conns:
            conn.close()


def test_a_trickling_body_is_reset_at_the_deadline(server: ServerProcess) -> None:
    """Item 4: --body-timeout-secs 2 counts from the request's start, not from the last DATA frame."""
    conn = Conn(server.grpc_addr)
    try:
        conn.send(frame(HEADERS, END_HEADERS, 1, block(request_fields(INFER))) + frame(DATA, 0, 1, b"\0\0\0\x10\0"))
        started = time.monotonic()
        while time.monotonic() - started < 6 and conn.answer.rst(1) is None:
            conn.send(frame(DATA, 0, 1, b"x"))   # one byte every half second, far under any per-frame timer
            conn.read(until=0.5, stop=lambda a: a.rst(1) is not None)
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    assert conn.answer.rst(1) == CANCEL, conn.answer.frames[-3:]
    assert 1.5 < elapsed < 4, elapsed


def test_inputs_that_used_to_raise_end_only_their_stream(server: ServerProcess) -> None:
    """Item 5: an empty header name and `grpc-timeout: ²S`, with another call in flight on the connection."""
    conn = Conn(server.grpc_addr)
    try:
        conn.send(frame(HEADERS, END_HEADERS, 1, block(request_fields())))   # in flight: body not sent yet
        conn.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, block(request_fields()) + literal("", "x")))
        assert conn.ended(3).rst(3) == PROTOCOL_ERROR
        assert call(conn, 5, request_fields(**{"grpc-timeout": "²S"})).get("grpc-status") == "3"   # INVALID_ARGUMENT
        conn.send(frame(DATA, END_STREAM, 1, EMPTY_MESSAGE))
        assert conn.ended(1).headers(1).get("grpc-status") == "0"
        assert conn.answer.goaway is None
    finally:
        conn.close()


def test_hpack_table_size_updates_are_applied_to_every_block(server: ServerProcess) -> None:
    """Item 6: a block repeated byte for byte must still apply its dynamic-table size update."""
    base = block(request_fields())
    grow, shrink = table_size_update(4096), table_size_update(0)
    conn = Conn(server.grpc_addr)
    try:
        statuses: list[str | None] = []
        for sid, head in ((1, grow + base), (3, shrink + base), (5, grow + base),
                          # the table is 4096 again: index a field, then refer to it (index 62)
                          (7, base + b"\x40" + literal("x-a", "1")[1:]), (9, base + b"\xbe")):
            conn.send(frame(HEADERS, END_HEADERS, sid, head) + frame(DATA, END_STREAM, sid, EMPTY_MESSAGE))
            statuses.append(conn.ended(sid).headers(sid).get("grpc-status"))
        assert statuses == ["0"] * 5, (statuses, conn.answer.goaway)
    finally:
        conn.close()


def test_client_trailers_after_our_reset_end_only_that_stream(server: ServerProcess) -> None:
    """Item 7: we answer early and reset; the client's trailers cross our RST_STREAM."""
    conn = Conn(server.grpc_addr)
    try:
        conn.send(frame(HEADERS, END_HEADERS, 1, block(request_fields("/nope/Nope"))))
        answer = conn.read(stop=lambda a: a.rst(1) is not None)
        assert answer.headers(1).get("grpc-status") == "12" and answer.rst(1) == NO_ERROR
        conn.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, literal("x-trailer", "1")))
        assert call(conn, 3).get("grpc-status") == "0"
        assert conn.answer.goaway is None
    finally:
        conn.close()


def test_malformed_requests_are_refused_per_stream(server: ServerProcess) -> None:
    """Item 8: RFC 9113 §8 — each malformed request gets RST_STREAM(PROTOCOL_ERROR); the connection lives."""
    fields = request_fields()
    malformed = [
        [*fields, ("X-Upper", "1")],
        [*fields, ("connection", "close")],
        [f if f[0] != "te" else ("te", "gzip") for f in fields],
        [f for f in fields if f[0] != ":path"],
        [*fields[:3], (":path", "/x"), *fields[3:]],
        [*fields[:2], ("x-a", "1"), *fields[2:]],
    ]
    conn = Conn(server.grpc_addr)
    try:
        for i, bad in enumerate(malformed):
            sid = 2 * i + 1
            conn.send(frame(HEADERS, END_HEADERS, sid, block(bad)) + frame(DATA, END_STREAM, sid, EMPTY_MESSAGE))
            assert conn.ended(sid).rst(sid) == PROTOCOL_ERROR, (bad, conn.answer.frames[-2:])
        assert call(conn, 101).get("grpc-status") == "0"
    finally:
        conn.close()


def _rapid_reset(conn: Conn) -> None:
    head = block(request_fields())
    conn.send(b"".join(frame(HEADERS, END_HEADERS, sid, head) + frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
                       for sid in range(1, 4001, 2)))


def _made_you_reset(conn: Conn) -> None:   # streams the server must reset itself
    bad = block([*request_fields(), ("X-Upper", "1")])
    conn.send(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, sid, bad) for sid in range(1, 4001, 2)))


def _ping_flood(conn: Conn) -> None:
    conn.send(frame(PING, 0, 0, b"12345678") * 20_000)


def _settings_flood(conn: Conn) -> None:
    conn.send(settings((0x4, 65535)) * 20_000)


@pytest.mark.parametrize("flood", [_rapid_reset, _made_you_reset, _ping_flood, _settings_flood],
                         ids=["rapid reset", "server-reset streams", "PING", "SETTINGS"])
def test_floods_get_enhance_your_calm(server: ServerProcess, flood: object) -> None:
    """Item 9: CVE-2023-44487 and the control-frame floods end with GOAWAY ENHANCE_YOUR_CALM."""
    conn = Conn(server.grpc_addr)
    try:
        flood(conn)  # type: ignore[operator]
        answer = conn.read(until=10, stop=lambda a: a.goaway is not None)
    finally:
        conn.close()
    assert answer.goaway == ENHANCE_YOUR_CALM, answer.frames[-2:]
    still_serves(server.grpc_addr)


def test_preface_then_frames_in_one_write(server: ServerProcess) -> None:
    """The preface check must pass everything after it on, however the bytes are cut."""
    conn = Conn(server.grpc_addr, preface=False)
    try:
        conn.send(PREFACE[:10])
        time.sleep(0.05)
        conn.send(PREFACE[10:] + settings() + frame(HEADERS, END_HEADERS, 1, block(request_fields()))
                  + frame(DATA, END_STREAM, 1, EMPTY_MESSAGE))
        assert conn.ended(1).headers(1).get("grpc-status") == "0"
    finally:
        conn.close()
