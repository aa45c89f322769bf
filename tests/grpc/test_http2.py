"""The gRPC port's own HTTP/2 layer (server/grpc/http2.py on the h2 library, front.py), driven by an independent HTTP/2 client
(the `h2` package) over a raw socket: flow control both ways with windows far smaller than the
messages, pings, refusals at the HTTP level, and hostile framing — a non-HTTP/2 client, a CONTINUATION
flood, a request body that stops arriving. After each, the server still answers tritonclient.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from server.grpc._generated import grpc_service_pb2 as pb
from tests.grpc.samples import NUMPY
from tests.support import ServerProcess, copy_repository

INFER = "/inference.GRPCInferenceService/ModelInfer"
TYPES = {name: dtype for name, dtype in NUMPY.items() if name != "BYTES"}   # the fixed-size ones


class Client:
    """A minimal gRPC-over-HTTP/2 client on h2: one socket, requests one at a time."""

    def __init__(self, addr: str, *, window: int = 65_535) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.window_updates_sent = 0

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def events(self) -> list[h2.events.Event]:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("server closed the connection")
        events = self.conn.receive_data(data)
        self.flush()
        return events

    def headers(self, path: str, *, method: str = "POST", content_type: str = "application/grpc") -> list[tuple[str, str]]:
        return [(":method", method), (":scheme", "http"), (":path", path), (":authority", "test"),
                ("content-type", content_type), ("te", "trailers")]

    def send_body(self, sid: int, body: bytes) -> None:
        """Send within the server's windows, waiting for its WINDOW_UPDATEs as a real client must."""
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(view))
            if room <= 0:
                self.events()
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        self.conn.end_stream(sid)
        self.flush()

    def call(self, path: str, message: bytes, **kw: str) -> tuple[dict[str, str], bytes, dict[str, str]]:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path, **kw))
        self.flush()
        self.send_body(sid, len(message).to_bytes(5, "big") + message)
        return self.response(sid)

    def response(self, sid: int) -> tuple[dict[str, str], bytes, dict[str, str]]:
        head: dict[str, str] = {}
        trailers: dict[str, str] = {}
        body = bytearray()
        while True:
            for ev in self.events():
                if getattr(ev, "stream_id", sid) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    head = dict(ev.headers)  # type: ignore[arg-type]
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    # Acknowledge only what arrived: the server must wait for these to send the rest.
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    self.window_updates_sent += 1
                    self.flush()
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers = dict(ev.headers)  # type: ignore[arg-type]
                elif isinstance(ev, h2.events.StreamEnded):
                    if not trailers:   # trailers-only response
                        trailers = head
                    return head, bytes(body), trailers
                elif isinstance(ev, h2.events.StreamReset):
                    raise ConnectionResetError(f"stream {sid} reset with {ev.error_code!r}")

    def close(self) -> None:
        self.sock.close()


def identity_request(n: int, seed: int = 0) -> tuple[pb.ModelInferRequest, dict[str, bytes]]:
    rng = np.random.default_rng(seed)
    req = pb.ModelInferRequest(model_name="identity_types")
    expected: dict[str, bytes] = {}
    for name, dtype in TYPES.items():
        arr = (rng.random(n) > 0.5) if name == "BOOL" else rng.integers(0, 100, n).astype(dtype)
        req.inputs.add(name=f"IN_{name}", datatype=name, shape=[1, n])
        raw = np.ascontiguousarray(arr).tobytes()
        req.raw_input_contents.append(raw)
        expected[f"OUT_{name}"] = raw
    words = [f"w{i}".encode() for i in range(n)]
    raw = b"".join(struct.pack("<I", len(w)) + w for w in words)
    req.inputs.add(name="IN_BYTES", datatype="BYTES", shape=[1, n])
    req.raw_input_contents.append(raw)
    expected["OUT_BYTES"] = raw
    return req, expected


def outputs_of(body: bytes) -> dict[str, bytes]:
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    res = pb.ModelInferResponse.FromString(body[5:])
    return {o.name: res.raw_output_contents[i] for i, o in enumerate(res.outputs)}


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    c = Client(server.grpc_addr)
    yield c
    c.close()


def still_serves(addr: str) -> None:
    triton = grpcclient.InferenceServerClient(addr)
    try:
        assert triton.is_server_ready()
    finally:
        triton.close()


def test_messages_far_larger_than_every_window_arrive_whole_both_ways(server: ServerProcess) -> None:
    # ~4.7 MB each way; the client allows the server 4 KiB per stream before it acknowledges, so the
    # response needs >1,000 WINDOW_UPDATEs, and the request needs the server's own WINDOW_UPDATEs.
    c = Client(server.grpc_addr, window=4096)
    try:
        req, expected = identity_request(100_000)
        head, body, trailers = c.call(INFER, req.SerializeToString())
        assert head[":status"] == "200" and head["content-type"] == "application/grpc"
        assert trailers["grpc-status"] == "0", trailers
        assert len(body) > 4_000_000 and c.window_updates_sent > 100
        assert outputs_of(body) == expected
        # The same connection carries on after the long exchange.
        req, expected = identity_request(10, seed=1)
        assert outputs_of(c.call(INFER, req.SerializeToString())[1]) == expected
    finally:
        c.close()


def test_ping_is_answered(client: Client) -> None:
    client.conn.ping(b"12345678")
    client.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        acks = [e for e in client.events() if isinstance(e, h2.events.PingAckReceived)]
        if acks:
            assert acks[0].ping_data == b"12345678"
            return
    pytest.fail("no PING ACK")


def test_http_level_refusals(client: Client) -> None:
    head, _, _ = client.call(INFER, b"", method="GET")
    assert head[":status"] == "405"
    head, _, _ = client.call(INFER, b"", content_type="application/json")
    assert head[":status"] == "415"
    head, _, trailers = client.call("/inference.GRPCInferenceService/NoSuchRpc", b"")
    assert head[":status"] == "200" and trailers["grpc-status"] == "12"   # UNIMPLEMENTED
    assert "NoSuchRpc" in trailers["grpc-message"]


def test_bad_grpc_framing_is_a_status_not_a_dropped_connection(client: Client) -> None:
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, client.headers(INFER))
    client.conn.send_data(sid, b"\x00\x00\x00\x00\x10abc", end_stream=True)   # says 16 bytes, has 3
    client.flush()
    _, _, trailers = client.response(sid)
    assert trailers["grpc-status"] == "3" and "ended inside a message" in trailers["grpc-message"]
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, client.headers(INFER) + [("grpc-encoding", "snappy")])
    client.conn.send_data(sid, b"\x01\x00\x00\x00\x01x", end_stream=True)
    client.flush()
    _, _, trailers = client.response(sid)
    assert trailers["grpc-status"] == "12" and "snappy" in trailers["grpc-message"]
    req, expected = identity_request(3)
    assert outputs_of(client.call(INFER, req.SerializeToString())[1]) == expected


def test_a_client_reset_mid_request_leaves_the_connection_usable(client: Client) -> None:
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, client.headers(INFER))
    client.conn.send_data(sid, b"\x00\x00\x01\x00\x00" + b"x" * 100)
    client.conn.reset_stream(sid)
    client.flush()
    req, expected = identity_request(5)
    assert outputs_of(client.call(INFER, req.SerializeToString())[1]) == expected


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    got = bytearray()
    while True:
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            pytest.fail(f"the server kept the connection open; got {bytes(got[:80])!r}")
        if not data:
            return bytes(got)
        got += data


def test_a_non_http2_client_is_closed(server: ServerProcess) -> None:
    host, port = server.grpc_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        got = read_until_closed(sock)
    # Our SETTINGS, then GOAWAY (type 7) with PROTOCOL_ERROR (1).
    assert b"\x07\x00\x00\x00\x00\x00" in got and b"\x00\x00\x00\x01" in got
    still_serves(server.grpc_addr)


def test_a_continuation_flood_ends_the_connection(server: ServerProcess) -> None:
    host, port = server.grpc_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        sock.sendall(b"\x00\x00\x01\x01\x00\x00\x00\x00\x01\x82")   # HEADERS without END_HEADERS
        piece = b"\x00\x40\x00\x09\x00\x00\x00\x00\x01" + b"\x00" * 0x4000   # CONTINUATION, 16 KiB each
        for _ in range(8):   # 1 + 8 x 16 KiB: just over the 128 KiB bound, and nothing left unread after it
            sock.sendall(piece)
        got = read_until_closed(sock)
    assert b"\x00\x00\x00\x0b" in got   # GOAWAY's ENHANCE_YOUR_CALM
    still_serves(server.grpc_addr)


def test_a_stalled_request_body_is_reset(tmp_path: Path) -> None:
    proc = ServerProcess(copy_repository(tmp_path / "repo", ["identity_types"]),
                         extra_args=["--body-timeout-secs", "1"]).start()
    try:
        c = Client(proc.grpc_addr)
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, c.headers(INFER))
        c.conn.send_data(sid, b"\x00\x00\x00\x10\x00partial")   # 7 of 4096 bytes, then nothing
        c.flush()
        started = time.monotonic()
        with pytest.raises(ConnectionResetError, match="CANCEL"):
            c.response(sid)
        assert time.monotonic() - started < 10
        req, expected = identity_request(4)
        assert outputs_of(c.call(INFER, req.SerializeToString())[1]) == expected
        c.close()
    finally:
        proc.stop()


def test_grpcio_engine_answers_the_same(server: ServerProcess, tmp_path: Path) -> None:
    """The grpcio engine stays a working fallback: same bytes for the same request."""
    proc = ServerProcess(copy_repository(tmp_path / "repo", ["identity_types"]),
                         extra_args=["--grpc-engine", "grpcio"]).start()
    try:
        req, expected = identity_request(1000, seed=3)
        answers = []
        for addr in (server.grpc_addr, proc.grpc_addr):
            c = Client(addr)
            _, body, trailers = c.call(INFER, req.SerializeToString())
            c.close()
            assert trailers["grpc-status"] == "0"
            answers.append(outputs_of(body))
        assert answers[0] == answers[1] == expected
    finally:
        proc.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_ping_flood_from_a_peer_that_never_reads_stays_bounded(tmp_path: Path) -> None:
    proc = ServerProcess(copy_repository(tmp_path / "repo", ["add_sub"])).start()
    try:
        assert proc.proc is not None
        before = rss_kib(proc.proc.pid)
        host, port = proc.grpc_addr.rsplit(":", 1)
        ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"p" * 8
        burst = ping * 4096
        sent = 0
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            sock.settimeout(0.5)
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:   # never reads: every PING ACK piles up on the server's side
                try:
                    sent += sock.send(burst)
                except TimeoutError:
                    pass   # the server stopped reading: what we want
                except (ConnectionResetError, BrokenPipeError):
                    break   # or it ended the flood with GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §10.5): also bounded
            grown = rss_kib(proc.proc.pid) - before
            still_serves(proc.grpc_addr)
        # Without the bound the server would hold one 17-byte ACK per PING read: the peer got far fewer in.
        assert grown < 64 * 1024, f"RSS grew {grown} KiB after {sent} bytes of PINGs"
        assert sent < 256 * 1024 * 1024
    finally:
        proc.stop()


def test_stalled_requests_do_not_hold_concurrency_slots(tmp_path: Path) -> None:
    """A stream reset by the server (stalled body) must give back its slot under --max-concurrent-requests."""
    proc = ServerProcess(copy_repository(tmp_path / "repo", ["identity_types"]),
                         extra_args=["--body-timeout-secs", "1", "--max-concurrent-requests", "2"]).start()
    try:
        for _ in range(2):   # twice the limit's worth of stalls, one after the other
            c = Client(proc.grpc_addr)
            sids = []
            for _ in range(2):
                sid = c.conn.get_next_available_stream_id()
                c.conn.send_headers(sid, c.headers(INFER))
                c.conn.send_data(sid, b"\x00\x00\x00\x10\x00partial")
                sids.append(sid)
            c.flush()
            reset: dict[int, object] = {}
            while len(reset) < len(sids):
                for ev in c.events():
                    if isinstance(ev, h2.events.StreamReset):
                        reset[ev.stream_id] = ev.error_code
            assert set(reset) == set(sids) and all(code == h2.errors.ErrorCodes.CANCEL for code in reset.values())
            c.close()
        c = Client(proc.grpc_addr)
        req, expected = identity_request(4)
        _, body, trailers = c.call(INFER, req.SerializeToString())
        assert trailers["grpc-status"] == "0", trailers
        assert outputs_of(body) == expected
        c.close()
    finally:
        proc.stop()


def test_a_stream_carries_many_times_its_window(server: ServerProcess) -> None:
    """ModelStreamInfer with ~12 MB each way on one stream: the server must reopen the stream's 1 MiB
    receive window as it reads, and send under tritonclient's windows; compressed and plain requests mixed."""
    import queue

    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    n = 30_000
    rng = np.random.default_rng(7)
    sent = []
    try:
        for i in range(8):
            x = rng.standard_normal((1, n)).astype(np.float32)
            inputs = []
            for name, dtype in TYPES.items():
                arr = (x > 0) if name == "BOOL" else x.astype(dtype)
                inp = grpcclient.InferInput(f"IN_{name}", [1, n], name)
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            words = np.array([[b"w"] * n], dtype=object)
            inp = grpcclient.InferInput("IN_BYTES", [1, n], "BYTES")
            inp.set_data_from_numpy(words)
            inputs.append(inp)
            sent.append(x)
            client.async_stream_infer("identity_types", inputs, request_id=str(i),
                                      outputs=[grpcclient.InferRequestedOutput("OUT_FP32")])
        got = [results.get(timeout=60) for _ in sent]
    finally:
        client.stop_stream()
        client.close()
    for i, (result, error) in enumerate(got):
        assert error is None, error
        assert result.get_response().id == str(i)
        np.testing.assert_array_equal(result.as_numpy("OUT_FP32"), sent[i])
