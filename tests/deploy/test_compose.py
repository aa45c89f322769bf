"""docker-compose.yml, the Dockerfile and the nginx load balancer, exercised without a container engine.

`docker-compose config` validates the file; the exact command and environment it gives the server
start the real server (container paths mapped to a temporary repository, container ports to free
ports); the compose healthcheck runs against it; nginx with deploy/compose/nginx.conf proxies REST
(HTTP/1.1) and gRPC (HTTP/2) to it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
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
from tests.deploy.helpers import add_sub_body, add_sub_ok, local_nginx_conf, nginx_exe, start_nginx
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
    # nginx sends both protocols to the compose service name and the server's ports, started by the
    # script that adapts `http2 on;` to older nginx; it fails over at once from a replica that is gone.
    conf = NGINX_CONF.read_text()
    assert "http://server:8000" in conf and "grpc://server:8001" in conf
    assert re.search(r"listen 8001;\n\s*http2 on;", conf) and "listen 8001 http2" not in conf
    for directive in ("proxy_connect_timeout 1s;", "proxy_next_upstream error timeout;",
                      "grpc_connect_timeout 1s;", "grpc_next_upstream error timeout;", "resolver 127.0.0.11 valid="):
        assert directive in conf, directive
    lb = services["lb"]
    assert lb["command"][:3] == ["sh", "/etc/nginx/modelbridge/nginx-start.sh", "/etc/nginx/modelbridge/nginx.conf"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in lb["volumes"]}
    assert Path(mounts["/etc/nginx/modelbridge/nginx.conf"]).resolve() == NGINX_CONF
    # API keys come from the environment compose runs in: none unless set.
    env = server["environment"]
    assert {env[k] for k in ("MODELBRIDGE_ADMIN_KEYS", "MODELBRIDGE_INFERENCE_KEYS")} == {""}


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


def test_nginx_proxies_rest_and_grpc(compose_server: Mapped, tmp_path: Path) -> None:
    nginx = nginx_exe()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    lb_rest, lb_grpc = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    # The shipped config with compose's names swapped for loopback addresses (no Docker DNS here).
    ports = compose_server.ports
    conf.write_text(local_nginx_conf(lb_rest, lb_grpc, {"server:8000": f"127.0.0.1:{ports['8000']}",
                                                        "server:8001": f"127.0.0.1:{ports['8001']}"}))
    proc = start_nginx(nginx, conf, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{lb_rest}/v2/health/ready", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "nginx.err").read_text()
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


def dockerfile_stages(name: str = "Dockerfile") -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = ""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        if instr.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = [("FROM", rest.split(" AS ")[0].strip())]
        elif current:
            stages[current].append((instr.upper(), rest.strip()))
    return stages


def test_dockerfile_runs_the_compose_command_as_non_root(compose: dict) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"(?im)^#\s*syntax\s*=", text), "a remote BuildKit frontend needs Docker Hub"
    stages = dockerfile_stages()
    # The legacy builder builds every stage before the target: the serving image's file has no other.
    assert list(stages) == ["ui", "build", "serve"], list(stages)
    assert stages["build"][0] == ("FROM", "python:3.11-slim") and stages["serve"][0] == ("FROM", "python:3.11-slim")
    instructions = " ".join(v for stage in stages.values() for _, v in stage).lower()
    assert "convert]" not in instructions and "tensorflow" not in instructions and "torch" not in instructions
    serve = dict(stages["serve"])
    assert serve["USER"] == "10001" and json.loads(serve["ENTRYPOINT"]) == ["modelbridge"]
    # Only the built venv crosses into the serving stage: no wheels, no sources, no build tools.
    assert [v for k, v in stages["serve"] if k == "COPY"] == ["--from=build /opt/modelbridge /opt/modelbridge"]
    assert "HOME=/home/modelbridge" in serve["ENV"] and "--create-home" in serve["RUN"]
    assert "ORT_DISABLE_TELEMETRY=1" in serve["ENV"]   # else a plain-text line breaks the JSON logs
    cmd = json.loads(serve["CMD"])
    server = compose["services"]["server"]
    assert cmd == server["command"] and ["modelbridge"] == server["entrypoint"]
    build_parser().parse_args(cmd)  # every flag the image passes exists
    assert set(serve["EXPOSE"].split()) == set(CONTAINER_PORTS)
    assert "/v2/health/ready" in serve["HEALTHCHECK"]
    assert server["build"]["target"] == "serve"
    shlex.split(serve["HEALTHCHECK"])  # well-formed


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(p, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(p.split("/")[-1],
               pat[3:])) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [src for stage in dockerfile_stages().values() for k, v in stage if k == "COPY"
               and not v.startswith("--from") for src in v.split()[:-1]]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sent = {f for f in tracked if not docker_ignored(f, patterns)}
    for src in sources:   # every COPY finds its files in the context
        under = [f for f in tracked if src == "." or f == src or f.startswith(src.rstrip("/") + "/")]
        assert under and set(under) & sent, f"COPY {src}: nothing of it reaches the build context"
    # ...and the context is the package, its README and the JS sources the ui stage builds: nothing else.
    files = {"pyproject.toml", "README.md", "clients/js/package.json", "clients/js/package-lock.json"}
    dirs = ("server/", "converters/", "clients/js/src/", "clients/js/scripts/")
    expected = {f for f in tracked if f in files or f.startswith(dirs)}
    assert sent == expected, sent ^ expected
    for local in (".git/HEAD", ".venv/bin/python", "tests/support.py", "clients/js/node_modules/x/index.js",
                  "clients/js/test/wire.test.js", "server/ui/vendor/modelbridge.js",
                  "server/__pycache__/cli.cpython-311.pyc"):
        assert docker_ignored(local, patterns), local


def test_the_converter_image_is_a_separate_file_with_one_tensorflow_and_cpu_torch() -> None:
    (stage,) = dockerfile_stages("Dockerfile.converter").values()
    assert stage[0] == ("FROM", "${BASE}")
    instructions = dict(stage)
    assert "COPY" not in instructions and "ADD" not in instructions   # built from the serving image alone
    run = instructions["RUN"]
    assert "import importlib.metadata" in run and "convert" in run   # the pins are pyproject's, not copied here
    assert "--no-deps $(grep -E '^tf-keras'" in run and "torch.version.cuda is None" in run
    assert any("download.pytorch.org/whl/cpu" in v for k, v in stage if k == "ARG")
    convert = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["convert"]
    assert any(r.startswith("tensorflow-cpu==") for r in convert) and not any(
        re.match(r"tensorflow[=<> ]", r) for r in convert)
    assert any(r.startswith("torch==") for r in convert) and any(r.startswith("tf-keras") for r in convert)
    assert [v for k, v in stage if k == "USER"][-1] == "10001"


def test_nginx_answers_grpc_with_a_grpc_status_when_no_replica_can(tmp_path: Path) -> None:
    """No replica reachable: gRPC clients get UNAVAILABLE as a gRPC status (which their retry policy may
    retry), not nginx's HTML 502 page; REST clients get 502."""
    nginx = nginx_exe()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    lb_rest, lb_grpc, dead = free_port(), free_port(), free_port()   # nothing listens on `dead`
    conf = tmp_path / "nginx.conf"
    conf.write_text(local_nginx_conf(lb_rest, lb_grpc, {"server:8000": f"127.0.0.1:{dead}",
                                                        "server:8001": f"127.0.0.1:{dead}"}))
    proc = start_nginx(nginx, conf, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status = httpx.get(f"http://127.0.0.1:{lb_rest}/v2/health/ready", timeout=2).status_code
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "nginx.err").read_text()
                time.sleep(0.1)
        assert status == 502
        with grpcclient.InferenceServerClient(f"127.0.0.1:{lb_grpc}") as grpc:
            with pytest.raises(Exception) as err:
                grpc.is_server_ready()
            assert "StatusCode.UNAVAILABLE" in str(err.value) and "no replica answered" in str(err.value), err.value
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(20)
