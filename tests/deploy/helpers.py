"""Shared by the deployment tests: add_sub requests, a Prometheus text parser, a raw HTTP client, nginx."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import orjson

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')
# Model control requests are administration; these tests run without API keys.
OPEN_ADMIN = {"MODELBRIDGE_ALLOW_UNAUTHENTICATED_ADMIN": "1"}


def add_sub_body(batch: int = 1, *, rid: str | None = None, width: int = 16) -> dict:
    a = [[i + b for i in range(width)] for b in range(batch)]
    ones = [[1] * width for _ in range(batch)]
    body: dict = {"inputs": [
        {"name": "INPUT0", "shape": [batch, width], "datatype": "INT32", "data": a},
        {"name": "INPUT1", "shape": [batch, width], "datatype": "INT32", "data": ones},
    ]}
    if rid is not None:
        body["id"] = rid
    return body


def add_sub_ok(doc: dict, batch: int = 1) -> bool:
    out = {o["name"]: o["data"] for o in doc["outputs"]}
    flat = [i + b for b in range(batch) for i in range(16)]
    return out["OUTPUT0"] == [x + 1 for x in flat] and out["OUTPUT1"] == [x - 1 for x in flat]


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, frozenset(labels.items())): value} for every sample line of Prometheus text."""
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def raw_post(port: int, path: str, body: dict, timeout: float = 30.0) -> tuple[str, int | None, bytes]:
    """One request on a fresh connection (Connection: close), read to EOF.

    Returns (outcome, status, body): outcome is "response" (complete), "not_accepted" (refused, or
    reset/closed before a single response byte) or "truncated" (some bytes, then the connection ended)."""
    payload = orjson.dumps(body)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
    received = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(head + payload)
            while chunk := s.recv(65536):
                received += chunk
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        if not received:
            return "not_accepted", None, b""
        return "truncated", None, received
    if not received:
        return "not_accepted", None, b""
    header, sep, rest = received.partition(b"\r\n\r\n")
    if not sep:
        return "truncated", None, received
    status = int(header.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", header)
    if m is None or len(rest) < int(m.group(1)):
        return "truncated", status, received
    return "response", status, rest


NGINX_DIR = Path(__file__).resolve().parents[2] / "deploy" / "compose"


def nginx_exe() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def start_nginx(exe: str, conf: Path, prefix: Path) -> subprocess.Popen[bytes]:
    """nginx on `conf`, started the way compose starts it: through deploy/compose/nginx-start.sh (which
    rewrites `http2 on;` for an nginx older than 1.25.1, such as Debian bookworm's). Logs to prefix/nginx.err."""
    (prefix / "logs").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(exe).parent}:{os.environ.get('PATH', '')}", "TMPDIR": str(prefix)}
    argv = ["sh", str(NGINX_DIR / "nginx-start.sh"), str(conf), "-p", str(prefix),
            "-g", f"daemon off; pid {prefix}/nginx.pid;"]
    with open(prefix / "nginx.err", "wb") as err:   # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)


def local_nginx_conf(rest_port: int, grpc_port: int, upstream: dict[str, str]) -> str:
    """deploy/compose/nginx.conf listening on loopback ports, with `upstream` replacements (e.g. the
    compose names server:8000 / server:8001 swapped for reachable addresses)."""
    conf = (NGINX_DIR / "nginx.conf").read_text()
    for old, new in upstream.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    for port, local in (("8000", rest_port), ("8001", grpc_port)):
        assert f"listen {port};" in conf
        conf = conf.replace(f"listen {port};", f"listen 127.0.0.1:{local};")
    return conf
