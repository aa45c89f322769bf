"""Start the real server (`python -m server.cli serve`) on free loopback ports for end-to-end tests, and the
small model the tests and scripts/soak.py upload."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "server" / "examples" / "repository"


def scale_model(k: float = 2.0, *, pad_bytes: int = 0) -> onnx.ModelProto:
    """y = x * k over [batch, 3]; `pad_bytes` adds an unused initializer to make the file big."""
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [1], [k])]
    if pad_bytes:
        inits.append(numpy_helper.from_array(np.zeros(pad_bytes // 4, np.float32), "pad"))
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_repository(dest: Path, models: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(EXAMPLES.iterdir()):
        if src.is_dir() and (models is None or src.name in models):
            shutil.copytree(src, dest / src.name)
    return dest


@dataclass
class ServerProcess:
    repository: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    # The server refuses administration without an admin key; tests that do not exercise access
    # control get the operator's explicit opt-out. tests/security starts servers with keys instead.
    allow_unauthenticated_admin: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "server.cli", "serve", "--model-repository", str(self.repository),
            "--host", "127.0.0.1", "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            *(["--allow-unauthenticated-admin"] if self.allow_unauthenticated_admin else []), *self.extra_args,
        ]

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.log_path = self.repository.parent / f"server-{self.http_port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server did not stop within {timeout}s:\n{self.log()}")
