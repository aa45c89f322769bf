"""docker-compose.yml, the Dockerfile and the nginx load balancer, exercised without a container engine.

`docker-compose config` validates the file; the exact command and environment it gives the server
start the real server (container paths mapped to a temporary repository, container ports to free
ports); the compose healthcheck runs against it; nginx with deploy/compose/nginx.conf proxies REST
(HTTP/1.1) and gRPC (HTTP/2) to it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import yaml

from server.cli import build_parser
from tests.deploy.helpers import add_sub_body, add_sub_ok
from tests.support import ROOT, copy_repository, free_port

COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "compose" / "nginx.conf"
CONTAINER_PORTS = {"8000": "http", "8001": "grpc", "8002": "metrics"}


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (the Makefile's `browser` target installs it)")
    out = subprocess.run([exe, "-f", str(COMPOSE), "config"], cwd=ROOT, capture_output=True, text=True,
                         check=False, timeout=60, env={**os.environ, "MODEL_REPOSITORY": "./server/examples/repository"})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_config_validates_and_wires_the_stack(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"server", "lb", "prometheus"}
    server = services["server"]
    assert {str(p) for p in server["expose"]} == set(CONTAINER_PORTS)
    assert "ports" not in server, "replicas publish no host ports, so `--scale server=3` works"
    assert [m for m in server["volumes"] if m.split(":")[1] == "/models"], server["volumes"]
    assert {int(p["published"]) for p in services["lb"]["ports"]} == {8000, 8001}
    assert services["lb"]["depends_on"]["server"]["condition"] == "service_healthy"
    prom = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    sd = prom["scrape_configs"][0]["dns_sd_configs"][0]
    assert sd["names"] == ["server"] and str(sd["port"]) == server["environment"]["MODELBRIDGE_METRICS_PORT"]
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
    # nginx sends both protocols to the compose service name and the server's ports.
    conf = NGINX_CONF.read_text()
    assert "http://server:8000" in conf and "grpc://server:8001" in conf and "listen 8001 http2" in conf


@dataclass
class Mapped:
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]       # container port -> free host port
    healthcheck: list[str]


def map_compose_server(compose: dict, repo: Path) -> Mapped:
    """The compose server's entrypoint + command + environment, with /models and the ports mapped."""
    server = compose["services"]["server"]
    ports = {p: free_port() for p in CONTAINER_PORTS}

    def port_sub(text: str) -> str:
        return re.sub(r"\b(800[012])\b", lambda m: str(ports[m.group(1)]), text)

    argv = [*server["entrypoint"], *server["command"]]
    assert argv[0] == "modelbridge"
    argv = [sys.executable, "-m", "server.cli", *[str(repo) if a == "/models" else a for a in argv[1:]]]
    env = {k: port_sub(str(v)) for k, v in server["environment"].items()}
    test = server["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    return Mapped(argv, env, ports, [sys.executable, *(port_sub(a) for a in test[2:])])


@pytest.fixture(scope="module")
def compose_server(compose: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mapped]:
    repo = copy_repository(tmp_path_factory.mktemp("compose") / "models", ["add_sub"])
    mapped = map_compose_server(compose, repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELBRIDGE_")} | mapped.env
    log = repo.parent / "server.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(mapped.argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(mapped.healthcheck, capture_output=True, check=False, timeout=10).returncode != 0:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield mapped
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    # The compose environment asks for JSON-lines logs.
    assert all(line.startswith("{") for line in log.read_text().splitlines() if line.strip())


def test_the_compose_command_serves(compose_server: Mapped) -> None:
    http = compose_server.ports["8000"]
    r = httpx.post(f"http://127.0.0.1:{http}/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(2)))
    assert r.status_code == 200 and add_sub_ok(r.json(), 2)
    metrics = httpx.get(f"http://127.0.0.1:{compose_server.ports['8002']}/metrics").text
    assert 'nv_inference_request_success{model="add_sub",version="1"} 1' in metrics
    with grpcclient.InferenceServerClient(f"127.0.0.1:{compose_server.ports['8001']}") as grpc:
        assert grpc.is_server_ready()
    # Poll mode (and no admin key): API calls cannot change what is loaded; the repository decides.
    refused = httpx.post(f"http://127.0.0.1:{http}/v2/repository/models/add_sub/unload",
                         headers={"Authorization": "Bearer none"})
    assert refused.status_code in (400, 401, 403)


def render_nginx(lb_rest: int, lb_grpc: int, ports: dict[str, int]) -> str:
    """The shipped config with compose's names swapped for loopback addresses (no Docker DNS here)."""
    conf = NGINX_CONF.read_text()
    conf = conf.replace("server:8000", f"127.0.0.1:{ports['8000']}").replace("server:8001", f"127.0.0.1:{ports['8001']}")
    conf = conf.replace("listen 8000;", f"listen 127.0.0.1:{lb_rest};")
    conf = conf.replace("listen 8001 http2;", f"listen 127.0.0.1:{lb_grpc} http2;")
    return conf


def test_nginx_proxies_rest_and_grpc(compose_server: Mapped, tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    lb_rest, lb_grpc = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx(lb_rest, lb_grpc, compose_server.ports))
    for sub in ("logs", "tmp"):
        (tmp_path / sub).mkdir()
    directives = (f"daemon off; pid {tmp_path}/nginx.pid;")
    check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", directives],
                           capture_output=True, text=True, check=False, timeout=30)
    assert check.returncode == 0, check.stderr
    with open(tmp_path / "err.log", "wb") as err:
        proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-g", directives],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{lb_rest}/v2/health/ready", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err.log").read_text()
                time.sleep(0.1)
        assert ready.status_code == 200
        # REST over HTTP/1.1 keep-alive through the proxy, JSON and binary bodies alike.
        with httpx.Client(base_url=f"http://127.0.0.1:{lb_rest}", timeout=30) as http:
            for batch in (1, 3):
                r = http.post("/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(batch)))
                assert r.status_code == 200 and add_sub_ok(r.json(), batch)
            assert http.post("/v2/models/nope/infer", content=b"{}").status_code == 404
        # gRPC (HTTP/2) through the proxy.
        with grpcclient.InferenceServerClient(f"127.0.0.1:{lb_grpc}") as grpc:
            assert grpc.is_server_ready()
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(np.ones_like(a))
            result = grpc.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
            with pytest.raises(Exception, match="unknown model"):
                grpc.infer("nope", inputs)
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop of the nginx master we started
        proc.wait(20)


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = ""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        if instr.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = [("FROM", rest.split(" AS ")[0].strip())]
        else:
            stages[current].append((instr.upper(), rest.strip()))
    return stages


def test_dockerfile_runs_the_compose_command_as_non_root(compose: dict) -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "serve", "the default target is the slim serving image"
    assert {"build", "runtime", "converter", "serve"} <= set(stages)
    assert stages["build"][0] == ("FROM", "python:3.11-slim") and stages["runtime"][0] == ("FROM", "python:3.11-slim")
    runtime = dict(stages["runtime"])
    assert runtime["USER"] == "10001" and json.loads(runtime["ENTRYPOINT"]) == ["modelbridge"]
    assert "[convert]" not in " ".join(v for _, v in stages["runtime"] + stages["serve"])
    assert "[convert]" in dict(stages["converter"])["RUN"]
    serve = dict(stages["serve"])
    cmd = json.loads(serve["CMD"])
    server = compose["services"]["server"]
    assert cmd == server["command"] and ["modelbridge"] == server["entrypoint"]
    build_parser().parse_args(cmd)  # every flag the image passes exists
    assert set(serve["EXPOSE"].split()) == set(CONTAINER_PORTS)
    assert "/v2/health/ready" in serve["HEALTHCHECK"]
    assert server["build"]["target"] == "serve"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    shlex.split(serve["HEALTHCHECK"])  # well-formed
