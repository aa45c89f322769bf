"""Overload and slow clients: the per-model in-flight bound, the V2 `timeout` parameter and gRPC deadlines,
body and header deadlines, the connection cap, and CORS — each against a real server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from server.grpc._generated import grpc_service_pb2 as pb
from server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.security.conftest import ADMIN_KEY, INFERENCE_KEY, bearer, keyed_server
from tests.support import ServerProcess, copy_repository

SLOW = "slow_batch"   # add_sub with a dynamic batcher that waits 3 s for company
DELAY = 3.0


def body(**params: object) -> dict:
    doc: dict = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}
                            for n in ("INPUT0", "INPUT1")]}
    if params:
        doc["parameters"] = params
    return doc


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = copy_repository(tmp_path_factory.mktemp("limits") / "repo", ["add_sub"])
    (repo / SLOW).mkdir()
    (repo / SLOW / "1").mkdir()
    (repo / SLOW / "1" / "model.onnx").write_bytes((repo / "add_sub" / "1" / "model.onnx").read_bytes())
    (repo / SLOW / "config.pbtxt").write_text(
        "max_batch_size: 64\ndynamic_batching { preferred_batch_size: [64] max_queue_delay_microseconds: 3000000 }\n")
    proc = ServerProcess(repo, ["--max-pending-per-model", "4", "--body-timeout-secs", "1",
                                "--header-timeout-secs", "1"]).start()
    yield proc
    proc.stop()


def test_in_flight_bound_per_model_answers_503_with_retry_after(limited: ServerProcess) -> None:
    with httpx.Client(base_url=limited.url, timeout=30) as http, ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: http.post(f"/v2/models/{SLOW}/infer", json=body()), range(10)))
        codes = sorted(r.status_code for r in replies)
        assert codes == [200] * 4 + [503] * 6, codes
        refused = next(r for r in replies if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "in flight" in refused.json()["error"]
        # other models are not held up by a full one
        assert http.post("/v2/models/add_sub/infer", json=body()).status_code == 200


def _stats(http: httpx.Client) -> dict:
    return http.get(f"/v2/models/{SLOW}/stats").json()["model_stats"][0]


def test_timeout_parameter_fails_a_request_still_queued(limited: ServerProcess) -> None:
    with httpx.Client(base_url=limited.url, timeout=30) as http:
        before = _stats(http)
        start = time.monotonic()
        r = http.post(f"/v2/models/{SLOW}/infer", json=body(timeout=100_000))   # 100 ms; the batcher waits 3 s
        took = time.monotonic() - start
        assert r.status_code == 504 and "timed out" in r.json()["error"], r.text
        assert took < DELAY / 2, took
        for bad in (-1, "soon", True, 1.5):
            r = http.post(f"/v2/models/{SLOW}/infer", json=body(timeout=bad))
            assert r.status_code == 400 and "timeout" in r.json()["error"], (bad, r.text)
        assert http.post(f"/v2/models/{SLOW}/infer", json=body(timeout=5_000_000)).status_code == 200
        time.sleep(DELAY + 0.2)   # let the abandoned item's batch slot pass
        after = _stats(http)
        assert after["execution_count"] - before["execution_count"] == 1   # the timed-out one never ran


def test_grpc_deadline_bounds_the_time_queued(limited: ServerProcess) -> None:
    req = pb.ModelInferRequest(model_name=SLOW)
    for n in ("INPUT0", "INPUT1"):
        t = req.inputs.add(name=n, datatype="INT32", shape=[1, 16])
        t.contents.int_contents.extend([1] * 16)
    with grpc.insecure_channel(limited.grpc_addr) as channel, httpx.Client(base_url=limited.url) as http:
        before = _stats(http)["inference_stats"]["fail"]["count"]
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "timed out" in err.value.details(), err.value.details()   # the server's answer, not the transport's
        deadline = time.monotonic() + DELAY / 2
        while _stats(http)["inference_stats"]["fail"]["count"] == before and time.monotonic() < deadline:
            time.sleep(0.05)
        # The server itself gave up on it (a failure in its statistics) long before the batch would run.
        assert _stats(http)["inference_stats"]["fail"]["count"] == before + 1


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("request_line", [b"POST /v2/models/add_sub/infer HTTP/1.1",
                                          b"PUT /v2/repository/models/x/versions/1 HTTP/1.1"])
def test_a_stalled_body_is_cut_with_408(limited: ServerProcess, request_line: bytes) -> None:
    with _raw(limited.http_port) as s:
        s.sendall(request_line + b"\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{\"inputs\"")
        start = time.monotonic()
        reply = _read_all(s)   # returns when the server closes the connection
        took = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within 1 s" in reply
    assert 0.8 < took < 5, took


def test_stalled_headers_and_idle_connections_are_closed(limited: ServerProcess) -> None:
    with _raw(limited.http_port) as idle, _raw(limited.http_port) as partial:
        partial.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\n")
        start = time.monotonic()
        # A request that had started is told why (408), then closed; an idle connection just closes.
        reply = _read_all(partial)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert _read_all(idle) == b""
        assert time.monotonic() - start < 5
    # a well-behaved keep-alive client is unaffected
    with httpx.Client(base_url=limited.url) as http:
        for _ in range(3):
            assert http.post("/v2/models/add_sub/infer", json=body()).status_code == 200


def test_connection_cap(tmp_path) -> None:
    proc = ServerProcess(copy_repository(tmp_path / "repo", ["add_sub"]), ["--max-concurrent-requests", "2"]).start()
    try:
        with _raw(proc.http_port), _raw(proc.http_port):
            time.sleep(0.2)
            r = httpx.post(proc.url + "/v2/models/add_sub/infer", json=body())
            assert r.status_code == 503
        assert httpx.post(proc.url + "/v2/models/add_sub/infer", json=body()).status_code == 200
    finally:
        proc.stop()


def test_cors_off_by_default(limited: ServerProcess) -> None:
    r = httpx.get(limited.url + "/v2/models/add_sub", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = httpx.options(limited.url + "/v2/models/add_sub/infer", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allow_list_with_keys(tmp_path) -> None:
    app = "https://app.example"
    proc = keyed_server(copy_repository(tmp_path / "repo", ["add_sub"]),
                        extra=["--cors-origins", f"{app}, https://other.example"]).start()
    try:
        pre = httpx.options(proc.url + "/v2/models/add_sub/infer", headers={
            "Origin": app, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, inference-header-content-length"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == app
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        ok = httpx.get(proc.url + "/v2/models/add_sub/model.onnx", headers={"Origin": app, **bearer(INFERENCE_KEY)})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == app
        assert "etag" in ok.headers["access-control-expose-headers"].lower()
        denied = httpx.get(proc.url + "/v2/models/add_sub", headers={"Origin": app})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == app
        other = httpx.get(proc.url + "/v2/models/add_sub", headers={"Origin": "https://evil.example", **bearer(ADMIN_KEY)})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
        bad_pre = httpx.options(proc.url + "/v2/repository/index", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert bad_pre.status_code == 400 and "access-control-allow-origin" not in bad_pre.headers
    finally:
        proc.stop()
