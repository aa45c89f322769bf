"""Arbitrary HTTP/2 frame sequences at the gRPC port: whatever a peer sends after the preface — any frame
type, flags, stream ids, lengths and payloads, valid header blocks mixed with garbage — the server answers
or closes that connection, never crashes, never logs a traceback, and keeps serving other clients."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import hpack
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import ServerProcess, copy_repository

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", sid) + payload


def request_headers(path: str) -> bytes:
    return hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                   (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")])


PATHS = st.sampled_from(["/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ServerLive",
                         "/inference.GRPCInferenceService/ModelStreamInfer", "/grpc.health.v1.Health/Check",
                         "/nope/Nope"])
FRAMES = st.one_of(
    # anything at all
    st.builds(frame, st.integers(0, 12), st.integers(0, 255), st.integers(0, 9),
              st.binary(max_size=64)),
    # a well-formed request's headers on some stream, with random flags
    st.builds(lambda sid, flags, path: frame(1, flags, sid, request_headers(path)),
              st.integers(1, 9), st.sampled_from([0x4, 0x5, 0x0, 0x1, 0x24]), PATHS),
    # DATA carrying gRPC-framed random bytes
    st.builds(lambda sid, flags, body, declared: frame(0, flags, sid, bytes((0,)) + struct.pack(">I", declared) + body),
              st.integers(1, 9), st.sampled_from([0, 1, 8]), st.binary(max_size=40), st.integers(0, 80)),
    # window updates, settings, pings, resets with random values
    st.builds(lambda sid, inc: frame(8, 0, sid, struct.pack(">I", inc)), st.integers(0, 9), st.integers(0, 2**32 - 1)),
    st.builds(lambda k, v: frame(4, 0, 0, struct.pack(">HI", k, v)), st.integers(0, 8), st.integers(0, 2**32 - 1)),
    st.builds(lambda sid, code: frame(3, 0, sid, struct.pack(">I", code)), st.integers(0, 9), st.integers(0, 15)),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(copy_repository(tmp_path_factory.mktemp("h2fuzz") / "repo", ["add_sub"]),
                         allow_unauthenticated_admin=False).start()
    yield proc
    assert proc.proc is not None and proc.proc.poll() is None
    proc.stop()
    assert "Traceback" not in proc.log()


SERVER_FAULTS = {"2", "13", "15"}   # UNKNOWN, INTERNAL, DATA_LOSS


def exchange(addr: str, data: bytes) -> bytes:
    host, port = addr.rsplit(":", 1)
    got = bytearray()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            while chunk := sock.recv(65536):
                got += chunk
        except TimeoutError:
            pass   # the server may keep a connection open that still has streams; that is allowed
        except (ConnectionResetError, BrokenPipeError):
            pass   # closed on a connection error
    return bytes(got)


def statuses(data: bytes) -> list[str]:
    """grpc-status of every HEADERS frame the server sent, decoded in order with one HPACK context (h2's
    encoder indexes, and resizes its table up to whatever SETTINGS_HEADER_TABLE_SIZE the frames offered)."""
    found = []
    pos = 0
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 1 << 32   # the fuzzed SETTINGS may have offered any size
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        kind = data[pos + 3]
        payload = data[pos + 9:pos + 9 + length]
        pos += 9 + length
        if kind == 1 and len(payload) == length:
            found += [v for k, v in decoder.decode(payload) if k == "grpc-status"]
    return found


def test_arbitrary_frame_sequences(server: ServerProcess) -> None:
    @given(frames=st.lists(FRAMES, min_size=1, max_size=12))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(frames: list[bytes]) -> None:
        answered = statuses(exchange(server.grpc_addr, PREFACE + SETTINGS + b"".join(frames)))
        assert not SERVER_FAULTS & set(answered), (frames, answered)

    check()
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    try:
        assert client.is_server_live() and client.is_model_ready("add_sub")
    finally:
        client.close()
