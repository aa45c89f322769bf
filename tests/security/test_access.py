"""Access control matrix: every REST endpoint and every rpc x no key / inference key / admin key / wrong key,
against real servers configured through the environment, plus the defaults of a server with no keys."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import onnx
import pytest

from server.core.auth import KeyRing, Scope, build_keyring, read_keys_file
from server.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from server.grpc._generated import grpc_service_pb2 as pb
from server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.security.conftest import ADMIN_KEY, INFERENCE_KEY, WRONG_KEY, bearer
from tests.support import ROOT, ServerProcess, copy_repository, free_port, scale_model

KEYS = {"none": None, "inference": INFERENCE_KEY, "admin": ADMIN_KEY, "wrong": WRONG_KEY}
ADD_SUB = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}
                      for n in ("INPUT0", "INPUT1")]}


SCALE_MODEL = scale_model().SerializeToString()

# (method, path, body, scope, status expected once authorised)
REST: list[tuple[str, str, bytes | None, Scope, int]] = [
    ("GET", "/v2/health/live", None, Scope.OPEN, 200),
    ("GET", "/v2/health/ready", None, Scope.OPEN, 200),
    ("GET", "/v2", None, Scope.INFERENCE, 200),
    ("GET", "/v2/models/stats", None, Scope.INFERENCE, 200),
    *[(m, p.format(prefix=prefix), b, Scope.INFERENCE, s)
      for prefix in ("/v2/models/add_sub", "/v2/models/add_sub/versions/1")
      for m, p, b, s in [
          ("GET", "{prefix}", None, 200), ("GET", "{prefix}/ready", None, 200),
          ("GET", "{prefix}/config", None, 200), ("GET", "{prefix}/stats", None, 200),
          ("GET", "{prefix}/model.onnx", None, 200), ("GET", "{prefix}/gates", None, 200),
          ("POST", "{prefix}/infer", httpx.Request("POST", "/", json=ADD_SUB).read(), 200)]],
    ("POST", "/v2/repository/index", b"{}", Scope.ADMIN, 200),
    ("POST", "/v2/repository/models/lstm_tiny/unload", b"", Scope.ADMIN, 200),
    ("POST", "/v2/repository/models/lstm_tiny/load", b"", Scope.ADMIN, 200),
    ("PUT", "/v2/repository/models/scaler/versions/1", SCALE_MODEL, Scope.ADMIN, 201),
]


def expected_rest(scope: Scope, who: str, ok: int) -> int:
    if scope is Scope.OPEN or who == "admin" or (scope is Scope.INFERENCE and who == "inference"):
        return ok
    return 403 if who == "inference" else 401


@pytest.mark.parametrize("who", list(KEYS))
def test_rest_matrix(secured: ServerProcess, who: str) -> None:
    with httpx.Client(base_url=secured.url, timeout=60, headers=bearer(KEYS[who])) as http:
        for method, path, body, scope, ok in REST:
            r = http.request(method, path, content=body)
            want = expected_rest(scope, who, ok)
            assert r.status_code == want, (who, method, path, r.status_code, r.text[:300])
            if want == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "key" in r.json()["error"]
            if want == 403:
                assert "admin key" in r.json()["error"]


def test_scope_bypass_attempts_are_classified_like_the_route(secured: ServerProcess) -> None:
    inference = bearer(INFERENCE_KEY)
    attempts = [
        ("POST", "/v2/%72epository/index"),          # percent-encoded: routed as /v2/repository/index
        ("POST", "/v2/repository/index/"),            # trailing slash
        ("PUT", "/v2/models/add_sub/versions/2"),     # the upload route under the model prefix
        ("POST", "/v2/repository/models/add_sub/unload"),
    ]
    for method, path in attempts:
        r = httpx.request(method, secured.url + path, headers=inference, content=SCALE_MODEL, timeout=30)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    # Still served: nothing above unloaded or replaced anything.
    assert httpx.post(secured.url + "/v2/models/add_sub/infer", json=ADD_SUB, headers=inference).status_code == 200
    for header in ("Bearer", "Basic " + INFERENCE_KEY, INFERENCE_KEY, "Bearer x", "bearer " + INFERENCE_KEY[:-1]):
        r = httpx.get(secured.url + "/v2/models/add_sub", headers={"Authorization": header})
        assert r.status_code == 401, header
    assert httpx.get(secured.url + "/v2/models/add_sub",
                     headers={"Authorization": "bearer " + INFERENCE_KEY}).status_code == 200


def _grpc_calls(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, tuple[Scope, Callable[..., Any]]]:
    infer = pb.ModelInferRequest(model_name="add_sub")
    for n in ("INPUT0", "INPUT1"):
        t = infer.inputs.add(name=n, datatype="INT32", shape=[1, 16])
        t.contents.int_contents.extend([1] * 16)

    def stream(metadata: Any) -> Any:
        responses = list(stub.ModelStreamInfer(iter([infer]), metadata=metadata, timeout=30))
        assert not responses[0].error_message
        return responses

    return {
        "ServerLive": (Scope.OPEN, lambda md: stub.ServerLive(pb.ServerLiveRequest(), metadata=md)),
        "ServerReady": (Scope.OPEN, lambda md: stub.ServerReady(pb.ServerReadyRequest(), metadata=md)),
        "ModelReady": (Scope.INFERENCE, lambda md: stub.ModelReady(pb.ModelReadyRequest(name="add_sub"), metadata=md)),
        "ServerMetadata": (Scope.INFERENCE, lambda md: stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=md)),
        "ModelMetadata": (Scope.INFERENCE,
                          lambda md: stub.ModelMetadata(pb.ModelMetadataRequest(name="add_sub"), metadata=md)),
        "ModelConfig": (Scope.INFERENCE, lambda md: stub.ModelConfig(pb.ModelConfigRequest(name="add_sub"), metadata=md)),
        "ModelStatistics": (Scope.INFERENCE,
                            lambda md: stub.ModelStatistics(pb.ModelStatisticsRequest(), metadata=md)),
        "ModelInfer": (Scope.INFERENCE, lambda md: stub.ModelInfer(infer, metadata=md)),
        "ModelStreamInfer": (Scope.INFERENCE, stream),
        "RepositoryIndex": (Scope.ADMIN, lambda md: stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=md)),
        "RepositoryModelUnload": (Scope.ADMIN, lambda md: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="lstm_tiny"), metadata=md)),
        "RepositoryModelLoad": (Scope.ADMIN, lambda md: stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="lstm_tiny"), metadata=md)),
    }


@pytest.mark.parametrize("who", list(KEYS))
def test_grpc_matrix(secured: ServerProcess, who: str) -> None:
    metadata = (("authorization", f"Bearer {KEYS[who]}"),) if KEYS[who] else ()
    with grpc.insecure_channel(secured.grpc_addr) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = _grpc_calls(stub)
        assert set(calls) == set(pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name)
        for rpc, (scope, call) in calls.items():
            want = expected_rest(scope, who, 200)
            try:
                call(metadata)
                got = 200
            except grpc.RpcError as exc:
                got = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}.get(exc.code(), -1)
                detail = exc.details()
            assert got == want, (who, rpc, got, locals().get("detail"))
        # grpc.health.v1 stays open for orchestrators
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_defaults_refuse_administration_and_keep_inference_open(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo", ["add_sub"])
    proc = ServerProcess(repo, allow_unauthenticated_admin=False).start()
    try:
        assert httpx.post(proc.url + "/v2/models/add_sub/infer", json=ADD_SUB).status_code == 200
        for method, path in [("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/add_sub/unload"),
                             ("PUT", "/v2/repository/models/x/versions/1")]:
            r = httpx.request(method, proc.url + path, headers=bearer(ADMIN_KEY))
            assert r.status_code == 403 and "--allow-unauthenticated-admin" in r.json()["error"], r.text
        with grpc.insecure_channel(proc.grpc_addr) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name="add_sub"))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert httpx.post(proc.url + "/v2/models/add_sub/infer", json=ADD_SUB).status_code == 200
    finally:
        proc.stop()


def test_keys_file_require_flag_and_keys_never_logged(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# operator keys\nadmin {ADMIN_KEY}\ninference {INFERENCE_KEY}  # ci\n")
    repo = copy_repository(tmp_path / "repo", ["add_sub"])
    proc = ServerProcess(repo, ["--keys-file", str(keys), "--log-level", "debug"],
                         allow_unauthenticated_admin=False).start()
    try:
        assert httpx.post(proc.url + "/v2/models/add_sub/infer", json=ADD_SUB).status_code == 401
        assert httpx.post(proc.url + "/v2/models/add_sub/infer", json=ADD_SUB,
                          headers=bearer(INFERENCE_KEY)).status_code == 200
        assert httpx.post(proc.url + "/v2/repository/index", headers=bearer(ADMIN_KEY)).status_code == 200
        assert httpx.post(proc.url + "/v2/repository/index", headers=bearer(WRONG_KEY)).status_code == 401
    finally:
        proc.stop()
    log = proc.log()
    for secret in (ADMIN_KEY, INFERENCE_KEY, WRONG_KEY):
        assert secret not in log
    # --require-inference-key with no key at all is a configuration error, caught before binding.
    out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--require-inference-key",
                          "--http-port", str(free_port()), "--grpc-port", "0", "--metrics-port", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "no API key" in out.stderr
    out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--http-port", str(free_port()),
                          "--grpc-port", "0", "--metrics-port", "0"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False, env={"MODELBRIDGE_ADMIN_KEYS": "s3cr3tZ", "PATH": "/usr/bin"})
    assert out.returncode == 2 and "shorter than" in out.stderr and "s3cr3tZ" not in out.stderr


def test_keyring_rules() -> None:
    ring = build_keyring(admin_keys=ADMIN_KEY, inference_keys=f"{INFERENCE_KEY}, {INFERENCE_KEY}")
    assert ring.inference_keys == (INFERENCE_KEY.encode(),)
    assert ADMIN_KEY not in repr(ring) and INFERENCE_KEY not in repr(ring)
    ring.check(Scope.ADMIN, f"Bearer {ADMIN_KEY}")
    ring.check(Scope.INFERENCE, f"Bearer {ADMIN_KEY}".encode())
    with pytest.raises(PermissionDenied):
        ring.check(Scope.ADMIN, f"Bearer {INFERENCE_KEY}")
    with pytest.raises(Unauthenticated):
        ring.check(Scope.INFERENCE, f"Bearer {ADMIN_KEY}x")
    KeyRing(allow_unauthenticated_admin=True).check(Scope.ADMIN, None)
    with pytest.raises(PermissionDenied):
        KeyRing().check(Scope.ADMIN, f"Bearer {ADMIN_KEY}")
    for bad in ("admin", "root k", "admin short"):
        path = Path(pytest.importorskip("tempfile").mkdtemp()) / "k"
        path.write_text(bad + "\n")
        with pytest.raises(InvalidArgument):
            read_keys_file(path)
    with pytest.raises(InvalidArgument):
        build_keyring(admin_keys="caf\u00e9" * 8)
    assert onnx.load_model_from_string(SCALE_MODEL).graph.name == "scale"


def test_every_rest_route_is_classified(tmp_path: Path) -> None:
    """Walk the routes the app really serves: repository routes and every write are administration,
    everything else under /v2 but health needs at least inference."""
    from server.core.repository import ModelRepository
    from server.core.service import InferenceService
    from server.rest.app import create_app
    from server.rest.security import scope_of

    app = create_app(InferenceService(ModelRepository(copy_repository(tmp_path / "repo", ["add_sub"]))))
    seen = 0
    for route in app.routes:
        path = getattr(route, "path", "")
        for method in getattr(route, "methods", None) or ():
            concrete = path.replace("{model}", "m").replace("{version}", "1")
            scope = scope_of(method, concrete)
            if path.startswith("/v2/repository") or method not in ("GET", "HEAD", "POST"):
                assert scope is Scope.ADMIN, (method, path)
            elif path.startswith("/v2/health/"):
                assert scope is Scope.OPEN, (method, path)
            elif path.startswith("/v2"):
                assert scope is Scope.INFERENCE, (method, path)
            seen += 1
    assert seen > 20
    assert scope_of("DELETE", "/v2/models/m") is Scope.ADMIN and scope_of("PATCH", "/v2") is Scope.ADMIN
