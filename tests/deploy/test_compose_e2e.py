"""docker compose for real: the image built from a clean clone, 3 replicas behind nginx, one killed under load.

Needs a reachable Docker engine (DOCKER_HOST) and compose; skipped with the reason otherwise, so CI
(which has none) stays green and fast. `make compose-test` runs it on purpose. On a machine without
Docker Hub, ../shared/deploy/standin-images.sh builds local stand-ins of the base images first.

It builds the serving image from `git clone` of this repository's HEAD (committed work only, as a user
gets it), starts `up --scale server=3` under a project name of its own on free host ports, and checks
what the README promises: healthy non-root replicas with JSON-only logs, REST + gRPC inference and the
ONNX download through the balancer, Prometheus scraping every replica, no failed and no slow request
while one replica is `docker kill`ed under mixed load, and a clean drain on `stop`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import yaml

from tests.deploy.engine import Stack, build_env, compose_command, engine_problem, run
from tests.deploy.helpers import add_sub_body, add_sub_ok, raw_post
from tests.support import ROOT, free_port

REPLICAS = 3
LOAD_SECS, KILL_AT = 25.0, 8.0
MAX_LATENCY = 5.0
# gRPC's own retry policy (a service config), as the README advises for clients of the compose stack:
# nginx re-sends a REST inference whose replica died under it, but cannot re-send a gRPC call (grpc_pass
# streams the body, it keeps no copy), so a call in flight on a killed replica comes back UNAVAILABLE.
GRPC_RETRY = [
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps({"methodConfig": [{
        "name": [{"service": "inference.GRPCInferenceService"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})),
]
pytestmark = pytest.mark.timeout(1800)   # a cold build on a busy 2-core machine takes minutes


@dataclass
class Ports:
    rest: int
    grpc: int
    prometheus: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Ports]]:
    problem = engine_problem()
    if problem and os.environ.get("COMPOSE_TEST_REQUIRED"):   # `make compose-test`: asked for on purpose
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)
    src = tmp_path_factory.mktemp("e2e") / "modelbridge"
    run(["git", "clone", "--quiet", str(ROOT), str(src)], timeout=120)
    image = yaml.safe_load((src / "docker-compose.yml").read_text())["services"]["server"]["image"]
    started = time.monotonic()
    env = build_env()
    # --network host: the build reaches PyPI/npm also on engines without NAT (dockerd --iptables=false).
    run(["docker", "build", "--network", "host", "-t", image, str(src)], timeout=1500, env=env)
    builder = "legacy" if env.get("DOCKER_BUILDKIT") == "0" else "BuildKit"
    size = int(run(["docker", "image", "inspect", "--format", "{{.Size}}", image], timeout=30).stdout)
    print(f"\n[e2e] {builder} build of {image} from a clean clone: {time.monotonic() - started:.0f} s, "
          f"{size / 1e6:.0f} MB")
    ports = Ports(free_port(), free_port(), free_port())
    st = Stack(f"mbe2e{os.getpid()}", src / "docker-compose.yml",
               {**os.environ, "LB_HTTP_PORT": str(ports.rest), "LB_GRPC_PORT": str(ports.grpc),
                "PROMETHEUS_PORT": str(ports.prometheus)}, compose_command() or [])
    try:
        st("up", "-d", "--no-build", "--scale", f"server={REPLICAS}", timeout=600)
        wait_for(lambda: all(health(st, c) == "healthy" for c in st.containers("server")), 180, "healthy replicas")
        wait_for(lambda: rest_ready(ports.rest), 60, "the balancer")
        yield st, ports
    finally:
        st("down", "--volumes", "--remove-orphans", timeout=300)


def wait_for(ready: Callable[[], bool], secs: float, what: str) -> None:
    deadline = time.monotonic() + secs
    while not ready():
        assert time.monotonic() < deadline, f"no {what} after {secs} s"
        time.sleep(1)


def health(st: Stack, container: str) -> str:
    return st.inspect(container)["State"].get("Health", {}).get("Status", "none")


def rest_ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def grpc_inputs() -> tuple[np.ndarray, list[grpcclient.InferInput]]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.ones_like(a))
    return a, inputs


def test_replicas_are_healthy_non_root_and_the_image_is_slim(stack: tuple[Stack, Ports]) -> None:
    st, _ = stack
    servers = st.containers("server")
    assert len(servers) == REPLICAS and all(health(st, c) == "healthy" for c in servers)
    for c in servers:
        uid = st.exec(c, "sh", "-c", "grep '^Uid:' /proc/1/status").split()[1:]
        assert uid and all(u == "10001" for u in uid), uid   # the server process itself, not just exec
    image = st.inspect(servers[0])["Config"]["Image"]
    probe = ("find / -xdev -name '*.whl'; python -c \"import importlib.util as u; "
             "print('frameworks:', [m for m in ('tensorflow', 'torch', 'keras', 'tf2onnx') if u.find_spec(m)])\"")
    *wheels, frameworks = run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c", probe],
                              timeout=120).stdout.splitlines()
    # None of ours; only the base image's own (Debian's python3-venv keeps pip/setuptools wheels there).
    assert all(w.startswith("/usr/share/python-wheels/") for w in wheels), wheels
    assert frameworks == "frameworks: []", frameworks
    # Nothing on stderr from onnxruntime even where ~ cannot be written (read-only root, as in Kubernetes).
    session = ("import glob, onnxruntime as ort; "
               "ort.InferenceSession(glob.glob('/opt/modelbridge/lib/python*/site-packages/server/examples/"
               "repository/add_sub/1/model.onnx')[0])")
    quiet = run(["docker", "run", "--rm", "--read-only", "-e", "HOME=/nonexistent", "--entrypoint", "python", image,
                 "-c", session], timeout=120)
    assert quiet.stderr == "", quiet.stderr


def test_rest_grpc_and_onnx_download_through_the_balancer(stack: tuple[Stack, Ports]) -> None:
    st, ports = stack
    with httpx.Client(base_url=f"http://127.0.0.1:{ports.rest}", timeout=30) as http:
        for batch in (1, 2):
            r = http.post("/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(batch)))
            assert r.status_code == 200 and add_sub_ok(r.json(), batch), r.text
        onnx = http.get("/v2/models/add_sub/model.onnx")
        assert onnx.status_code == 200 and onnx.content == (
            st.compose_file.parent / "server" / "examples" / "repository" / "add_sub" / "1" / "model.onnx").read_bytes()
        assert http.get("/v2/models/add_sub/model.onnx", headers={"If-None-Match": onnx.headers["etag"]}
                        ).status_code == 304
    a, inputs = grpc_inputs()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{ports.grpc}") as grpc:
        assert grpc.is_server_ready()
        for _ in range(3):
            np.testing.assert_array_equal(grpc.infer("add_sub", inputs).as_numpy("OUTPUT0"), a + 1)


def prometheus(port: int, path: str, **params: str) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/api/v1/{path}", params=params, timeout=10).json()["data"]


def test_prometheus_scrapes_every_replica(stack: tuple[Stack, Ports]) -> None:
    st, ports = stack

    def targets_up() -> int:
        active = prometheus(ports.prometheus, "targets")["activeTargets"]
        return sum(t["health"] == "up" and t["labels"]["job"] == "modelbridge" for t in active)

    wait_for(lambda: targets_up() == REPLICAS, 90, f"{REPLICAS} Prometheus targets up")
    # What the replicas count themselves (read inside each container) is what Prometheus sums.
    read = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8002/metrics').read().decode())"
    line = 'nv_inference_request_success{model="add_sub",version="1"}'
    own = sum(float(next(x for x in st.exec(c, "python", "-c", read).splitlines() if x.startswith(line)).split()[-1])
              for c in st.containers("server"))
    assert own > 0

    def summed() -> float:
        result = prometheus(ports.prometheus, "query", query=f"sum({line})")["result"]
        return float(result[0]["value"][1]) if result else -1.0

    wait_for(lambda: summed() == own, 60, f"Prometheus sum == {own}")


@dataclass
class Outcome:
    kind: str
    ok: bool
    start: float   # time.monotonic()
    secs: float
    detail: str = ""


def load(ports: Ports, secs: float, workers: int = 3, at: tuple[float, Callable[[], object]] | None = None
         ) -> list[Outcome]:
    """`workers` REST and `workers` gRPC clients sending add_sub for `secs`; at[1]() runs at at[0] s."""
    out: list[Outcome] = []
    lock, stop = threading.Lock(), threading.Event()

    def record(kind: str, t0: float, ok: bool, detail: str = "") -> None:
        with lock:
            out.append(Outcome(kind, ok, t0, time.monotonic() - t0, detail))
        if not ok:
            time.sleep(0.05)   # no busy loop on a stack that is going away

    def rest() -> None:   # a connection per request, read to EOF: a cut answer is told from a refusal
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                outcome, status, body = raw_post(ports.rest, "/v2/models/add_sub/infer", add_sub_body(1))
                ok = outcome == "response" and status == 200 and add_sub_ok(orjson.loads(body))
                record("rest", t0, ok, f"{outcome} {status} {body[:200]!r}")
            except (OSError, ValueError) as e:   # a timeout, or a 200 that is not the answer
                record("rest", t0, False, repr(e))

    def grpc() -> None:
        a, inputs = grpc_inputs()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports.grpc}", channel_args=GRPC_RETRY) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    got = client.infer("add_sub", inputs, client_timeout=30).as_numpy("OUTPUT0")
                    record("grpc", t0, bool(np.array_equal(got, a + 1)))
                except Exception as e:  # noqa: BLE001 - every failure is counted, with its message
                    record("grpc", t0, False, str(e)[:300])

    threads = [threading.Thread(target=f, daemon=True) for f in (rest, grpc) for _ in range(workers)]
    for t in threads:
        t.start()
    begin = time.monotonic()
    if at is not None:
        time.sleep(at[0])
        at[1]()
    time.sleep(max(0.0, secs - (time.monotonic() - begin)))
    stop.set()
    for t in threads:
        t.join(60)
    return out


def summary(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.ok]
    return (f"{len(outcomes)} requests ({sum(o.kind == 'rest' for o in outcomes)} REST, "
            f"{sum(o.kind == 'grpc' for o in outcomes)} gRPC), {len(failed)} failed, "
            f"max latency {max(o.secs for o in outcomes):.2f} s")


def test_a_replica_killed_under_load_fails_and_delays_nothing(stack: tuple[Stack, Ports]) -> None:
    st, ports = stack
    victim = st.containers("server")[0]
    outcomes = load(ports, LOAD_SECS, at=(KILL_AT, lambda: run(["docker", "kill", victim], timeout=60)))
    print(f"\n[e2e] docker kill of 1 of {REPLICAS} replicas during {LOAD_SECS:.0f} s of load: {summary(outcomes)}")
    assert not st.inspect(victim)["State"]["Running"]
    failed = [o for o in outcomes if not o.ok]
    assert not failed, (summary(outcomes), [(o.kind, o.detail) for o in failed[:5]])
    slow = sorted((o.secs for o in outcomes), reverse=True)[:5]
    assert slow[0] < MAX_LATENCY, (summary(outcomes), slow)
    assert len(outcomes) >= 100, summary(outcomes)   # the load was real
    assert rest_ready(ports.rest)


def test_stop_drains_cleanly_and_logs_are_json_only(stack: tuple[Stack, Ports]) -> None:
    st, ports = stack
    servers = st.containers("server")
    running = [c for c in servers if st.inspect(c)["State"]["Running"]]
    assert len(running) == REPLICAS - 1   # the one killed above stays down (docker kill: no restart)
    stop_at: list[float] = []

    def stop() -> None:
        stop_at.append(time.monotonic())
        st("stop", timeout=120)
        stop_at.append(time.monotonic())

    outcomes = load(ports, 12.0, workers=2, at=(3.0, stop))
    print(f"\n[e2e] compose stop under load: {summary(outcomes)}, stop took {stop_at[1] - stop_at[0]:.1f} s")
    # Every request sent before the stop completes; after it, nginx (stopped first) drains and exits,
    # and a request either completes or finds nothing listening (refused, or closed by Docker's port
    # proxy before any answer): never an error status, an answer cut short or a wrong answer.
    early = [o for o in outcomes if o.start < stop_at[0]]
    assert early and all(o.ok for o in early), [(o.kind, o.detail) for o in early if not o.ok][:5]
    bad = [o for o in outcomes if not o.ok and not never_answered(o)]
    assert not bad, [(o.kind, o.detail) for o in bad[:5]]
    assert stop_at[1] - stop_at[0] < 30   # each server finished its drain, none waited for SIGKILL
    for c in running:
        state = st.inspect(c)["State"]
        assert not state["Running"] and state["ExitCode"] == 0, (state, st.logs(c)[-5:])
        assert any("draining in-flight requests" in line for line in st.logs(c))
    for c in servers:   # JSON lines only, from start to exit (killed replica included)
        lines = st.logs(c)
        assert lines, c
        for line in lines:
            doc = json.loads(line)
            assert {"ts", "level", "message"} <= set(doc), line


def never_answered(o: Outcome) -> bool:
    """Refused, or closed before a single response byte (no HTTP status, no gRPC status from a server)."""
    if o.kind == "rest":
        return o.detail.startswith("not_accepted")
    return "StatusCode.UNAVAILABLE" in o.detail and "header with status" not in o.detail
