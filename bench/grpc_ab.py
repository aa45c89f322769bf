"""The gRPC port of two source trees (and grpcio's server) in the same run: server pinned to CPU 0, h2load
on CPU 1, engines in alternating rounds, each round a fresh server; req/s from h2load and the server's
CPU time per call from /proc/PID/stat. Medians over the rounds. The harness's gRPC rows: mlp and lstm,
1 connection, 8 streams.

usage: .venv/bin/python bench/grpc_ab.py --old /tmp/grpc-old [--rounds 5] [--secs 5]
  (e.g. the tree before issue 13: git archive 986b5b2 | tar -x -C /tmp/grpc-old)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from common import ROOT, layout, stop

PATH = "/inference.GRPCInferenceService/ModelInfer"
TICK = os.sysconf("SC_CLK_TCK")


def serve(tree: Path, repo: Path, engine: str, http: int, port: int) -> subprocess.Popen:
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "server.cli", "serve", "--model-repository", str(repo),
           "--http-port", str(http), "--grpc-port", str(port), "--metrics-port", "0", "--grpc-engine", engine,
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > 60:
            raise RuntimeError(f"{tree} {engine}: server did not become ready")
        time.sleep(0.05)


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime + stime


def check(port: int, body: bytes) -> None:
    """One real call answers OK (h2load counts any HTTP 200, a gRPC error included)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        ch.unary_unary(PATH)(body[5:], timeout=10)


def load(port: int, body: Path, secs: int) -> tuple[float, int]:
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-D", str(secs), "-c", "1", "-m", "8", "-d", str(body),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://127.0.0.1:{port}{PATH}"], capture_output=True, text=True, check=True).stdout
    return float(_found(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)), int(_found(r"(\d+) succeeded", out))


def _found(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"h2load printed no {pattern!r}: {text[-500:]}")
    return m.group(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True, help="the other source tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--no-grpcio", action="store_true")
    args = ap.parse_args()
    engines = [("old", args.old, "h2"), ("new", ROOT, "h2")]
    if not args.no_grpcio:
        engines.append(("grpcio", ROOT, "grpcio"))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = layout(work)
        for r in range(args.rounds):
            order = engines if r % 2 == 0 else engines[::-1]
            for label, tree, engine in order:
                proc = serve(tree, repo, engine, 18390, 18391)
                try:
                    for model in ("mlp", "lstm"):
                        body = work / f"{model}.grpc"
                        check(18391, body.read_bytes())
                        load(18391, body, 1)   # warm up
                        before = cpu_secs(proc.pid)
                        rps, done = load(18391, body, args.secs)
                        us = (cpu_secs(proc.pid) - before) / done * 1e6
                        results.setdefault((label, model), []).append((rps, us))
                        print(f"round {r} {label:6s} {model:4s}: {rps:7.0f} req/s  {us:5.0f} us server CPU/call",
                              flush=True)
                finally:
                    stop(proc)
    print(f"\nmedians over {args.rounds} rounds ({args.secs} s each, 1 connection, 8 streams):")
    for model in ("mlp", "lstm"):
        for label, _, _ in engines:
            rows = results[(label, model)]
            print(f"  {model:4s} {label:6s}: {statistics.median(r for r, _ in rows):7.0f} req/s  "
                  f"{statistics.median(u for _, u in rows):5.0f} us server CPU/call")


if __name__ == "__main__":
    main()
