"""deploy/compose/nginx.conf in front of replicas that share one DNS name, as `--scale server=N` makes them.

Each replica binds its own loopback address (127.0.0.2, 127.0.0.3, ...) on the same ports, as
containers do, and a tiny DNS server stands in for Docker's: nginx runs the shipped config with only
the resolver address and the port numbers changed, so the test exercises its re-resolution and
round-robin for REST (HTTP/1.1) and gRPC (HTTP/2), scaling up and down under traffic."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient

from tests.deploy.dns import TinyDNS
from tests.deploy.helpers import (
    add_sub_body,
    add_sub_ok,
    local_nginx_conf,
    nginx_exe,
    parse_metrics,
    start_nginx,
)
from tests.support import ServerProcess, copy_repository, free_port

SUCCESS = ("nv_inference_request_success", frozenset({("model", "add_sub"), ("version", "1")}))


@dataclass
class Replica(ServerProcess):
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self) -> list[str]:
        return [*super().command(), "--host", self.host]

    def served(self) -> int:
        text = httpx.get(f"http://{self.host}:{self.metrics_port}/metrics", timeout=10).text
        return int(parse_metrics(text)[SUCCESS])


@pytest.fixture(name="nginx_exe")
def nginx_exe_fixture() -> str:
    exe = nginx_exe()
    if exe is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return exe


def rest_ok(port: int, n: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for _ in range(n):
            r = http.post("/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(1)))
            assert r.status_code == 200 and add_sub_ok(r.json()), r.text


def grpc_ok(port: int, n: int) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.ones_like(a))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        for _ in range(n):
            np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a + 1)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    out = [Replica(copy_repository(tmp_path / f"r{i}" / "models", ["add_sub"]), ["--log-level", "warning"],
                   http_port=http, grpc_port=grpc, metrics_port=metrics, host=host)
           for i, host in enumerate(("127.0.0.2", "127.0.0.3"))]
    try:
        with ThreadPoolExecutor(len(out)) as pool:  # start side by side, as containers do
            list(pool.map(Replica.start, out))
        yield out
    finally:
        for r in out:
            r.stop()


def test_nginx_spreads_rest_and_grpc_over_replicas_as_they_scale(
    nginx_exe: str, replicas: list[Replica], tmp_path: Path
) -> None:
    a, b = replicas
    lb_rest, lb_grpc = free_port(), free_port()
    with TinyDNS() as dns:
        dns.records["server"] = [a.host]  # `--scale server=1`
        conf = local_nginx_conf(lb_rest, lb_grpc, {"resolver 127.0.0.11 ": f"resolver 127.0.0.1:{dns.port} ",
                                                   "server:8000": f"server:{a.http_port}",
                                                   "server:8001": f"server:{a.grpc_port}"})
        (tmp_path / "nginx.conf").write_text(conf)
        proc = start_nginx(nginx_exe, tmp_path / "nginx.conf", tmp_path)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{lb_rest}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "nginx.err").read_text()
                time.sleep(0.1)

            rest_ok(lb_rest, 6)
            grpc_ok(lb_grpc, 4)
            assert (a.served(), b.served()) == (10, 0)

            # `--scale server=2`: nginx re-resolves the name and the new replica gets its share.
            dns.records["server"] = [a.host, b.host]
            deadline = time.monotonic() + 20
            while b.served() == 0:
                assert time.monotonic() < deadline, "the new replica never got traffic"
                rest_ok(lb_rest, 2)
                time.sleep(0.2)
            before = (a.served(), b.served())
            rest_ok(lb_rest, 20)
            grpc_ok(lb_grpc, 20)
            gained = (a.served() - before[0], b.served() - before[1])
            assert sum(gained) == 40 and min(gained) >= 10, gained  # round-robin over both

            # `--scale server=1` again: replica a leaves; traffic continues without a failed request.
            dns.records["server"] = [b.host]
            a.stop()
            before_b = b.served()
            rest_ok(lb_rest, 20)
            grpc_ok(lb_grpc, 10)
            assert b.served() - before_b == 30
        finally:
            proc.send_signal(signal.SIGQUIT)
            proc.wait(20)
