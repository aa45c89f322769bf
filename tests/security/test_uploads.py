"""Uploads from a hostile administrator's client: the malicious-model corpus, names, sizes, and a checker
that crashes or runs out of time — refused with 4xx, and the server keeps serving what it served."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from server.core import sandbox
from server.grpc._generated import grpc_service_pb2 as pb
from server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.security.conftest import ADMIN_KEY, bearer, keyed_server
from tests.security.models import CORPUS, nested_ifs
from tests.support import ServerProcess, copy_repository, scale_model

X = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    repo = copy_repository(tmp_path_factory.mktemp("uploads") / "repo", ["add_sub"])
    proc = keyed_server(repo, inference_key=False, extra=["--max-body-bytes", str(48 << 20)]).start()
    with httpx.Client(base_url=proc.url, headers=bearer(ADMIN_KEY), timeout=120) as http:
        r = http.put("/v2/repository/models/scaler/versions/1", content=scale_model(2.0).SerializeToString())
        assert r.status_code == 201, r.text
        yield proc, http
    proc.stop()


def serving_unchanged(proc: ServerProcess, http: httpx.Client) -> None:
    r = http.post("/v2/models/scaler/infer", json=X)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6], r.text
    assert sorted(p.name for p in (proc.repository / "scaler").iterdir()) == ["1"]
    leftovers = list((proc.repository / ".staging").iterdir()) if (proc.repository / ".staging").exists() else []
    assert leftovers == []


@pytest.mark.parametrize("case", list(CORPUS))
def test_malicious_model_corpus_is_refused(admin: tuple[ServerProcess, httpx.Client], case: str) -> None:
    proc, http = admin
    build, message = CORPUS[case]
    r = http.put("/v2/repository/models/scaler/versions/2", content=build().SerializeToString())
    assert r.status_code == 400, (case, r.status_code, r.text)
    assert message in r.json()["error"], (case, r.text)
    serving_unchanged(proc, http)


def test_garbage_truncated_and_recursion_bombs(admin: tuple[ServerProcess, httpx.Client]) -> None:
    proc, http = admin
    good = scale_model(3.0).SerializeToString()
    for body, message in [(b"", "empty"), (b"\xff" * 1000, "not an ONNX model"), (good[:-9], ""),
                          (nested_ifs(5000), "not an ONNX model")]:
        r = http.put("/v2/repository/models/scaler/versions/2", content=body)
        assert r.status_code == 400 and message in r.json()["error"], r.text
    serving_unchanged(proc, http)


def test_same_corpus_through_triton_load_files_and_grpc(admin: tuple[ServerProcess, httpx.Client]) -> None:
    proc, http = admin
    evil = CORPUS["external data pointing outside"][0]().SerializeToString()
    body = {"parameters": {"file:2/model.onnx": base64.b64encode(evil).decode()}}
    r = http.post("/v2/repository/models/scaler/load", json=body)
    assert r.status_code == 400 and "external data" in r.json()["error"], r.text
    for rel in ("2/../../../../tmp/x", "/etc/x", "2/model.onnx\x00.txt", "..\\..\\x"):
        r = http.post("/v2/repository/models/scaler/load",
                      json={"parameters": {f"file:{rel}": base64.b64encode(b"x").decode()}})
        assert r.status_code == 400, (rel, r.text)
    with grpc.insecure_channel(proc.grpc_addr) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.RepositoryModelLoadRequest(model_name="scaler")
        req.parameters["file:2/model.onnx"].bytes_param = evil
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(req, metadata=(("authorization", f"Bearer {ADMIN_KEY}"),), timeout=120)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "external data" in err.value.details()
    serving_unchanged(proc, http)


def test_hostile_names_and_versions(admin: tuple[ServerProcess, httpx.Client]) -> None:
    proc, http = admin
    good = scale_model(5.0).SerializeToString()
    names = ["..", "...", ".hidden", "a%00b", "a%2Fb", "%2Fetc%2Fpasswd", "x" * 200, "\uff4dodel", "mo\u0301del",
             "model\u202e", "con%0Aname", "a%5Cb", "-"]
    for name in names:
        r = http.put(f"/v2/repository/models/{name}/versions/1", content=good)
        assert r.status_code in (400, 404), (name, r.status_code, r.text)
    for version in ("0", "-1", "1.5", "\uff11", "99999999999999999999", "1e3", "%201"):
        r = http.put(f"/v2/repository/models/scaler/versions/{version}", content=good)
        assert r.status_code in (400, 404), (version, r.status_code, r.text)
    visible = sorted(p.name for p in proc.repository.iterdir() if not p.name.startswith("."))
    assert visible == ["add_sub", "scaler"]
    serving_unchanged(proc, http)


def test_upload_size_limit(admin: tuple[ServerProcess, httpx.Client]) -> None:
    proc, http = admin
    r = http.put("/v2/repository/models/scaler/versions/2", content=scale_model(pad_bytes=50 << 20).SerializeToString())
    assert r.status_code == 413, r.text
    serving_unchanged(proc, http)


def _sandbox_children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"server.core.sandbox" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.append(int(child))
            except OSError:
                pass
    return out


def test_a_crashing_checker_costs_one_upload_not_the_server(admin: tuple[ServerProcess, httpx.Client]) -> None:
    """SIGSEGV the checker process while it works (as a model exploiting onnxruntime would): the upload
    is refused, the server and its models live on."""
    proc, http = admin
    result: dict[str, httpx.Response] = {}
    model = scale_model(7.0, pad_bytes=16 << 20).SerializeToString()
    t = threading.Thread(target=lambda: result.setdefault(
        "r", http.put("/v2/repository/models/scaler/versions/2", content=model)))
    t.start()
    deadline = time.monotonic() + 30
    while not (children := _sandbox_children(proc.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert children, "no checker process seen"
    os.kill(children[0], signal.SIGSEGV)
    t.join(60)
    r = result["r"]
    assert r.status_code == 400 and "crashed the checker" in r.json()["error"] and "SIGSEGV" in r.json()["error"]
    assert proc.proc.poll() is None
    serving_unchanged(proc, http)


def test_checker_time_and_memory_limits_in_the_child() -> None:
    model = scale_model().SerializeToString()
    assert sandbox.check_model_bytes(model)["outputs"] == ["y"]
    start = time.monotonic()
    # 20 ms: less than importing onnx takes, so the deadline always strikes first.
    with pytest.raises(sandbox.InvalidArgument, match="within 0.02 s"):
        sandbox.check_model_bytes(model, sandbox.Limits(timeout_secs=0.02))
    assert time.monotonic() - start < 5
    # 64 MiB of address space cannot even hold onnxruntime: refused, whatever the library says about it.
    with pytest.raises(sandbox.InvalidArgument):
        sandbox.check_model_bytes(model, sandbox.Limits(memory_bytes=64 << 20))
    with pytest.raises(sandbox.PayloadTooLarge):
        sandbox.check_model_bytes(model, sandbox.Limits(max_model_bytes=10))


def test_checks_run_two_at_a_time() -> None:
    """Each check may take its whole memory limit, so a burst of uploads waits for a slot, then is told
    to come back (503 + Retry-After) rather than starting a child per request."""
    model = scale_model().SerializeToString()
    held = [sandbox._SLOTS.acquire(timeout=5) for _ in range(sandbox.MAX_CONCURRENT_CHECKS)]
    try:
        assert all(held)
        with pytest.raises(sandbox.Unavailable) as err:
            sandbox.check_model_bytes(model, sandbox.Limits(timeout_secs=0.2))
        assert err.value.retry_after
    finally:
        for _ in held:
            sandbox._SLOTS.release()
    assert sandbox.check_model_bytes(model)["inputs"] == ["x"]
