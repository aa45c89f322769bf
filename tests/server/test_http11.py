"""server.rest.http11 on real loopback sockets: real clients, the real service and FastAPI app behind it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
import uvloop

from server.core.auth import KeyRing
from server.core.repository import ModelRepository
from server.core.service import InferenceService
from server.rest.admission import Admission, route_table
from server.rest.app import create_app
from server.rest.fastpath import infer_handler, secure_infer
from server.rest.http11 import HttpServer
from server.rest.security import secure_app
from server.workers import reuseport_socket
from tests.support import copy_repository, scale_model

LIMIT = 1 << 20
ADD_SUB = orjson.dumps({"inputs": [
    {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
    {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
]})


class ThreadedServer:
    """An HttpServer on its own uvloop event loop in a background thread, as the real server runs it."""

    def __init__(self, app: Any, infer: Any, *, sock: socket.socket | None = None, **options: Any) -> None:
        self.server = HttpServer(app, infer=infer, max_body_bytes=LIMIT, **options)
        self.loop = uvloop.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start("127.0.0.1", 0, sock=sock))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.port = self.server.port
        self.url = f"http://127.0.0.1:{self.port}"

    def shutdown(self, grace: float) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(self.server.shutdown(grace), self.loop)

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.shutdown(1.0).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def connection_count(self) -> int:
        return asyncio.run_coroutine_threadsafe(_count(self.server), self.loop).result(5)


async def _count(server: HttpServer) -> int:
    return len(server.connections)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> InferenceService:
    repo = copy_repository(tmp_path_factory.mktemp("http11") / "repo", ["add_sub", "lstm_tiny"])
    svc = InferenceService(ModelRepository(repo))
    svc.start()
    return svc


@pytest.fixture(scope="module")
def served(service: InferenceService) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(create_app(service, max_body_bytes=LIMIT), infer_handler(service))
    yield srv
    srv.stop()


@pytest.fixture
def impatient(service: InferenceService) -> Iterator[ThreadedServer]:
    """Short header, body and keep-alive timeouts."""
    srv = ThreadedServer(create_app(service, max_body_bytes=LIMIT), infer_handler(service),
                         header_timeout=0.5, body_timeout=0.5, keepalive_timeout=0.5)
    yield srv
    srv.stop()


# -- raw HTTP ----------------------------------------------------------------------------------------
def connect(srv: ThreadedServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; partial data {self.buf!r}")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed in the middle of a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        status = int(self.line().split(b" ")[1])
        headers: dict[str, str] = {}
        while line := self.line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head or status in (100, 204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self.line(), 16):
                body += self.exactly(size)
                assert self.line() == b""
            assert self.line() == b""
            return status, headers, body
        return status, headers, self.exactly(int(headers["content-length"]))

    def closed(self, timeout: float = 3.0) -> bool:
        """True when the server closes the connection (EOF or reset) within `timeout` with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            extra = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        assert extra == b"", f"unexpected bytes {extra!r}"
        return True


def infer_request(body: bytes = ADD_SUB, *, model: str = "add_sub", extra: str = "") -> bytes:
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def output0(body: bytes) -> list[int]:
    return {o["name"]: o for o in orjson.loads(body)["outputs"]}["OUTPUT0"]["data"]


# -- real clients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer(served: ThreadedServer, binary: bool) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{served.port}")
    assert client.is_server_ready() and client.is_model_ready("add_sub")
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [2, 16], "INT32"), httpclient.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    for i in range(3):   # the same keep-alive connection each time
        res = client.infer("add_sub", inputs, outputs=outputs, request_id=f"r{i}")
        np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), a - b)
        assert res.get_response()["id"] == f"r{i}"
    with pytest.raises(Exception, match="unknown model|not found"):
        client.infer("no_such_model", inputs)
    del client   # closes it now, on this thread: gevent objects must not be finalised from another one


def test_httpx_routes_upload_download_etag_and_keep_alive(served: ThreadedServer, service: InferenceService) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        assert http.get("/v2").json()["name"] == "modelbridge"
        assert http.get("/v2/models/add_sub/versions/1/ready").status_code == 200
        index = http.post("/v2/repository/index", content=b'{"ready": true}').json()
        assert {e["name"] for e in index} >= {"add_sub", "lstm_tiny"}
        model = scale_model(2.0).SerializeToString()
        r = http.put("/v2/repository/models/scaler/versions/1", content=model)
        assert r.status_code == 201, r.text
        r = http.post("/v2/models/scaler/infer", content=orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}))
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6]
        r = http.get("/v2/models/scaler/model.onnx")
        assert r.status_code == 200 and r.content == model
        etag = r.headers["etag"]
        r = http.get("/v2/models/scaler/versions/1/model.onnx", headers={"If-None-Match": etag})
        assert r.status_code == 304 and r.content == b""
        assert http.get("/v2/no/such/route").status_code == 404
        r = http.get("/v2/models/add_sub/model.onnx?x=1%202")   # a query string does not disturb routing
        assert r.status_code == 200
        for i in range(20):
            r = http.post("/v2/models/add_sub/infer", content=ADD_SUB)
            assert r.status_code == 200 and output0(r.content) == [j + 1 for j in range(16)]
            assert r.headers["content-length"] == str(len(r.content))
        # Every request above went over one keep-alive connection.
        assert served.connection_count() == 1
    service.unload("scaler")


def test_chunked_request_body_from_httpx(served: ThreadedServer) -> None:
    def pieces() -> Iterator[bytes]:
        for i in range(0, len(ADD_SUB), 7):
            yield ADD_SUB[i:i + 7]

    with httpx.Client(base_url=served.url, timeout=30) as http:
        r = http.post("/v2/models/add_sub/infer", content=pieces())
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert r.status_code == 200 and output0(r.content) == [j + 1 for j in range(16)]


# -- raw sockets -------------------------------------------------------------------------------------
def test_pipelined_requests_are_answered_in_order(served: ThreadedServer) -> None:
    first = orjson.loads(ADD_SUB) | {"id": "first"}
    last = orjson.loads(ADD_SUB) | {"id": "last"}
    with connect(served) as sock:
        sock.sendall(infer_request(orjson.dumps(first)) + b"GET /v2/models/lstm_tiny HTTP/1.1\r\nHost: t\r\n\r\n"
                     + infer_request(orjson.dumps(last)))
        reader = Reader(sock)
        answers = [reader.response() for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert orjson.loads(answers[0][2])["id"] == "first"
    assert orjson.loads(answers[1][2])["name"] == "lstm_tiny"
    assert orjson.loads(answers[2][2])["id"] == "last"


def test_many_pipelined_requests_past_the_queue_limit(served: ThreadedServer) -> None:
    # ~1 MB of requests in one write: reading pauses at 64 queued and resumes as answers go out.
    n = 300
    pad = "X-Pad: " + "p" * 3000 + "\r\n"
    with connect(served) as sock:
        sock.sendall(b"".join(infer_request(orjson.dumps(orjson.loads(ADD_SUB) | {"id": str(i)}), extra=pad)
                              for i in range(n)))
        reader = Reader(sock)
        ids = [orjson.loads(reader.response()[2])["id"] for _ in range(n)]
    assert ids == [str(i) for i in range(n)]


def test_chunked_body_in_pieces(served: ThreadedServer) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(ADD_SUB), 50):
            piece = ADD_SUB[i:i + 50]
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            time.sleep(0.01)
        sock.sendall(b"0\r\n\r\n")
        status, _, body = Reader(sock).response()
    assert status == 200 and output0(body) == [j + 1 for j in range(16)]


def test_expect_100_continue(served: ThreadedServer) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(ADD_SUB))
        reader = Reader(sock)
        assert reader.line() == b"HTTP/1.1 100 Continue"
        assert reader.line() == b""
        sock.sendall(ADD_SUB)
        status, _, body = reader.response()
    assert status == 200 and output0(body) == [j + 1 for j in range(16)]


def test_http10_closes_unless_keep_alive(served: ThreadedServer) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        reader = Reader(sock)
        status, headers, _ = reader.response()
        assert status == 200 and headers.get("connection") == "close"
        assert reader.closed()
    with connect(served) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"GET /v2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, body = reader.response()
            assert status == 200 and headers["connection"] == "keep-alive" and orjson.loads(body)["name"]
    with connect(served) as sock:   # nothing after a request that says close is answered
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /v2 HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == 200
        assert reader.closed()


def test_big_content_length_is_refused_unread(served: ThreadedServer) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert status == 413 and "exceeds the limit" in orjson.loads(body)["error"]
        assert headers["connection"] == "close"
        assert reader.closed()
    with connect(served) as sock:   # any route, not only inference
        sock.sendall(b"PUT /v2/repository/models/m/versions/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        status, _, _ = Reader(sock).response()
        assert status == 413   # and no 100 Continue before it


def test_chunked_body_past_the_limit(served: ThreadedServer) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        reader = Reader(sock)
        chunk = b"x" * 65536
        try:
            for _ in range(LIMIT // len(chunk) + 2):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = reader.response()
    assert status == 413 and "exceeds the limit" in orjson.loads(body)["error"]


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                                     b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n",
                                     b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_http_is_400_and_closed(served: ThreadedServer, garbage: bytes) -> None:
    with connect(served) as sock:
        sock.sendall(garbage)
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert headers["connection"] == "close"
        assert status == 400 and "malformed HTTP" in orjson.loads(body)["error"]
        assert reader.closed()


def test_stalled_headers_and_body_get_408_and_idle_connections_close(impatient: ThreadedServer) -> None:
    with connect(impatient) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\n")   # no blank line: the headers never end
        reader = Reader(sock)
        start = time.monotonic()
        status, _, body = reader.response()
        assert status == 408 and "headers" in orjson.loads(body)["error"]
        assert reader.closed() and time.monotonic() - start < 3
    with connect(impatient) as sock:
        sock.sendall(infer_request()[:-10])   # the body stops short
        reader = Reader(sock)
        status, _, body = reader.response()
        assert status == 408 and "body" in orjson.loads(body)["error"]
        assert reader.closed()
    with connect(impatient) as sock:   # idle after an answer: closed quietly after the keep-alive timeout
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == 200
        assert reader.closed(timeout=3)
    with connect(impatient) as sock:   # a connection that never sends a byte is closed too
        assert Reader(sock).closed(timeout=3)


def test_graceful_shutdown_finishes_the_request_in_flight(service: InferenceService) -> None:
    srv = ThreadedServer(create_app(service, max_body_bytes=LIMIT), infer_handler(service))
    try:
        idle = connect(srv)
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        idle_reader = Reader(idle)
        assert idle_reader.response()[0] == 200
        busy = connect(srv)
        request = infer_request()
        busy.sendall(request[:-20])   # in flight: its body is still arriving
        time.sleep(0.1)
        done = srv.shutdown(grace=10)
        assert idle_reader.closed()   # an idle keep-alive connection closes at once
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=2)
        assert not done.done()
        busy.sendall(request[-20:])
        reader = Reader(busy)
        status, headers, body = reader.response()
        assert status == 200 and output0(body) == [j + 1 for j in range(16)]
        assert headers["connection"] == "close"
        assert reader.closed()
        done.result(5)
        idle.close()
        busy.close()
    finally:
        srv.stop()


# -- the ASGI bridge ---------------------------------------------------------------------------------
BIG_CHUNKS = 128


async def probe_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A small ASGI app exercising what the bridge must do for apps other than ours."""
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("kaboom")
    if path == "/silent":
        return
    message = await receive()
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/big":   # 8 MiB in 64 KiB pieces, more than socket buffers hold
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(BIG_CHUNKS * 65536).encode())]})
        for i in range(BIG_CHUNKS):
            await send({"type": "http.response.body", "body": bytes([i % 251]) * 65536,
                        "more_body": i < BIG_CHUNKS - 1})
        return
    echo = {k: scope[k] for k in ("method", "path", "query_string", "http_version", "scheme", "root_path")}
    echo["raw_path"] = scope["raw_path"].decode()
    echo["query_string"] = echo["query_string"].decode()
    echo["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
    echo["client"] = list(scope["client"])
    echo["server"] = list(scope["server"])
    echo["body"] = message["body"].decode()
    body = orjson.dumps(echo)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def test_asgi_scope_streaming_head_and_app_failures(service: InferenceService) -> None:
    srv = ThreadedServer(probe_app, infer_handler(service))
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            r = http.post("/a%20b/c?x=1&y=%2F", content=b"payload", headers={"X-Thing": "Yes"})
            echo = r.json()
            assert echo["method"] == "POST" and echo["path"] == "/a b/c" and echo["raw_path"] == "/a%20b/c"
            assert echo["query_string"] == "x=1&y=%2F" and echo["http_version"] == "1.1"
            assert echo["scheme"] == "http" and echo["root_path"] == "" and echo["body"] == "payload"
            assert ["x-thing", "Yes"] in echo["headers"]
            assert echo["server"] == ["127.0.0.1", srv.port] and echo["client"][0] == "127.0.0.1"
            r = http.get("/stream")
            assert r.headers["transfer-encoding"] == "chunked" and r.text == "one,two,three"
            r = http.head("/anything")
            assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
            for path in ("/boom", "/silent"):
                r = http.get(path)
                assert r.status_code == 500 and "internal error" in r.json()["error"]
            assert http.get("/after").status_code == 200   # the connection survived the failures
            # POST .../infer goes to the inference handler, not to the app
            r = http.post("/v2/models/add_sub/infer", content=ADD_SUB)
            assert output0(r.content) == [j + 1 for j in range(16)]
        with connect(srv) as sock:   # a slow reader: the app's sends wait while the transport is full
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /v2/x HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.5)
            reader = Reader(sock)
            status, _, body = reader.response()
            assert status == 200 and len(body) == BIG_CHUNKS * 65536
            assert all(body[i * 65536] == i % 251 and body[i * 65536 + 65535] == i % 251 for i in range(BIG_CHUNKS))
            assert orjson.loads(reader.response()[2])["path"] == "/v2/x"
        with connect(srv) as sock:   # HTTP/1.0 cannot be chunked: the body ends with the connection
            sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert data.endswith(b"\r\n\r\none,two,three") and b"chunked" not in data
    finally:
        srv.stop()


def test_secure_infer_checks_keys_and_sets_cors(service: InferenceService) -> None:
    key = "infer-key-0123456789abcdef"
    keys = KeyRing(inference_keys=(key.encode(),))
    handler = secure_infer(infer_handler(service), keys, cors_origins=["http://ui.example"])
    srv = ThreadedServer(probe_app, handler)
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            r = http.post("/v2/models/add_sub/infer", content=ADD_SUB, headers={"Origin": "http://ui.example"})
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert r.headers["access-control-allow-origin"] == "http://ui.example"
            r = http.post("/v2/models/add_sub/infer", content=ADD_SUB, headers={"Authorization": "Bearer wrong-key"})
            assert r.status_code == 401 and "not valid" in r.json()["error"]
            r = http.post("/v2/models/add_sub/infer", content=ADD_SUB,
                          headers={"Authorization": f"Bearer {key}", "Origin": "http://evil.example"})
            assert r.status_code == 200 and output0(r.content) == [j + 1 for j in range(16)]
            assert "access-control-allow-origin" not in r.headers and r.headers["vary"] == "Origin"
            assert "Inference-Header-Content-Length" in r.headers["access-control-expose-headers"]
    finally:
        srv.stop()


def test_concurrency_limit_answers_503(service: InferenceService) -> None:
    release = asyncio.Event()

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    srv = ThreadedServer(slow_app, infer_handler(service), max_concurrency=1)
    try:
        with connect(srv) as first:
            first.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.2)   # being answered now
            with connect(srv) as second:
                second.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
                status, headers, body = Reader(second).response()
                assert status == 503 and headers["retry-after"] == "1"
                assert "concurrency limit" in orjson.loads(body)["error"]
            srv.loop.call_soon_threadsafe(release.set)
            reader = Reader(first)
            assert reader.response()[0] == 204
            deadline = time.monotonic() + 5
            while srv.connection_count() > 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            first.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")   # alone again: served
            assert reader.response()[0] == 204
        with connect(srv) as idle, connect(srv) as other:   # an open connection counts, busy or not
            other.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            assert Reader(other).response()[0] == 503
            assert idle.fileno() >= 0
    finally:
        srv.stop()


def test_endless_headers_are_refused(served: ThreadedServer) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\n")
        reader = Reader(sock)
        try:
            for i in range(100):
                sock.sendall(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = reader.response()
    assert status == 431 and "headers exceed" in orjson.loads(body)["error"]


def test_upgrade_requests_are_answered_as_http11(served: ThreadedServer) -> None:
    # curl --http2 on http:// asks for h2c this way; the answer is plain HTTP/1.1 and the connection goes on.
    with connect(served) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
                     b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == 200
        assert reader.response()[0] == 200


def test_workers_share_a_reuseport_socket(service: InferenceService) -> None:
    # --workers: each worker serves its own SO_REUSEPORT socket on the same port.
    first = reuseport_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    servers = [ThreadedServer(create_app(service, max_body_bytes=LIMIT), infer_handler(service), sock=sock)
               for sock in (first, reuseport_socket("127.0.0.1", port))]
    try:
        assert [s.port for s in servers] == [port, port]
        for _ in range(8):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                r = http.post("/v2/models/add_sub/infer", content=ADD_SUB)
                assert r.status_code == 200 and output0(r.content) == [j + 1 for j in range(16)]
    finally:
        for srv in servers:
            srv.stop()


def test_security_layers_on_both_paths(service: InferenceService) -> None:
    # Composed as the server does: secure_app around FastAPI, secure_infer around the inference handler.
    admin, inference = "admin-key-0123456789abcdef", "infer-key-0123456789abcdef"
    keys = KeyRing(admin_keys=(admin.encode(),), inference_keys=(inference.encode(),))
    origins = ["http://ui.example"]
    fastapi_app = create_app(service, max_body_bytes=LIMIT)
    app = secure_app(fastapi_app, keys, cors_origins=origins, body_timeout_secs=0)
    gate = Admission(keys, cors_origins=origins, routes=route_table(fastapi_app.router.routes))
    srv = ThreadedServer(app, secure_infer(infer_handler(service), keys, cors_origins=origins), gate=gate)
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            for method, path in (("GET", "/v2/models/add_sub"), ("POST", "/v2/models/add_sub/infer")):
                r = http.request(method, path, content=ADD_SUB if method == "POST" else None,
                                 headers={"Origin": "http://ui.example"})
                assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
                assert r.headers["access-control-allow-origin"] == "http://ui.example", path
                r = http.request(method, path, content=ADD_SUB if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {inference}"})
                assert r.status_code == 200, path
            r = http.options("/v2/models/add_sub/infer", headers={
                "Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, inference-header-content-length"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"
            # refused from the request head (admission), with the same CORS headers
            r = http.put("/v2/repository/models/m/versions/1", content=b"x",
                         headers={"Authorization": f"Bearer {inference}", "Origin": "http://ui.example"})
            assert r.status_code == 403 and r.headers["access-control-allow-origin"] == "http://ui.example"
            r = http.post("/v2/models/add_sub/infer", content=iter([ADD_SUB]), headers={"Origin": "http://ui.example"})
            assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://ui.example"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert http.get("/v2/health/ready").status_code == 200
    finally:
        srv.stop()


def test_keep_alive_longer_than_header_timeout(service: InferenceService) -> None:
    # A client idle for longer than the header timeout (but within keep-alive) still gets its answer.
    srv = ThreadedServer(create_app(service, max_body_bytes=LIMIT), infer_handler(service),
                         header_timeout=0.3, keepalive_timeout=2.0)
    try:
        with connect(srv) as sock:
            reader = Reader(sock)
            for _ in range(2):
                request = infer_request()
                sock.sendall(request[:20])   # headers in two pieces: the deadline runs between them
                time.sleep(0.05)
                sock.sendall(request[20:])
                assert reader.response()[0] == 200
                time.sleep(0.6)
    finally:
        srv.stop()
