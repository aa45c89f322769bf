"""Shared helpers for the benchmark scripts: lay out the harness models, start the server pinned to a
core, drive it with wrk / h2load pinned to another, read its RSS."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_BENCH", ROOT.parent / "shared" / "bench"))
PY = sys.executable


def layout(work: Path, batching: dict[str, str] | None = None) -> Path:
    """The harness's mlp and lstm models in a Triton-layout repository, optional config per model."""
    subprocess.run([PY, str(SHARED / "make_models.py"), str(work)], check=True)
    subprocess.run([PY, str(SHARED / "make_payloads.py"), str(work)], check=True)
    repo = work / "repo"
    for m in ("mlp", "lstm"):
        (repo / m / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(work / f"{m}.onnx", repo / m / "1" / "model.onnx")
        if batching and m in batching:
            (repo / m / "config.pbtxt").write_text(batching[m])
    return repo


def start_server(repo: Path, http: int, grpc: int, *, cpu: str = "0", extra: list[str] | None = None
                 ) -> tuple[subprocess.Popen, float]:
    cmd = ["taskset", "-c", cpu, str(ROOT / ".venv" / "bin" / "modelbridge"), "serve", "--model-repository",
           str(repo), "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", "0", *(extra or [])]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=0.5).status_code == 200:
                return proc, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > 60:
            raise RuntimeError("server did not become ready")
        time.sleep(0.02)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def wrk(url: str, body: Path, *, conns: int, secs: int, cpu: str = "1") -> dict[str, float]:
    out = subprocess.run(["taskset", "-c", cpu, "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "-s",
                          str(SHARED / "post.lua"), url], env={**os.environ, "BODY_FILE": str(body)},
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"non200=(\d+)", out)
    return {"rps": rps, "requests": total, "non200": int(bad.group(1)) if bad else 0}


def h2load(url: str, body: Path, *, streams: int, secs: int, cpu: str = "1") -> dict[str, float]:
    out = subprocess.run(["taskset", "-c", cpu, "h2load", "-D", str(secs), "-c", "1", "-m", str(streams), "-d",
                          str(body), "-H", "content-type: application/grpc", "-H", "te: trailers", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    return {"rps": rps}


def rss_kib(pid: int) -> int:
    """RSS of the server process (the taskset exec's it, so the pid is the server's)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
