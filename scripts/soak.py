"""Bounded soak: the real server under mixed REST + gRPC load while versions are uploaded and models
unloaded/reloaded, checking every answer. `make soak` runs it for 60 s at concurrency 64.

Pass: zero unexpected errors (only the model being unloaded may answer 503), every answer numerically
right, the server alive at the end, and its RSS grown by less than --max-rss-growth after warm-up.
Prints one JSON document of figures; exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.grpc._generated import grpc_service_pb2 as pb
from server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.support import free_port, scale_model

ADMIN_KEY = "soak-admin-" + os.urandom(12).hex()
CHURN = "lstm_tiny"       # unloaded and reloaded during the run: the one model allowed to answer 503


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Tally:
    def __init__(self) -> None:
        self.ok = Counter()
        self.expected = Counter()
        self.unexpected: list[str] = []
        self.latency: dict[str, list[float]] = {"rest": [], "grpc": []}

    def bad(self, what: str) -> None:
        if len(self.unexpected) < 50:
            self.unexpected.append(what)
        else:
            self.unexpected.append("...")


def add_sub_rest_body(a: np.ndarray, b: np.ndarray) -> dict:
    return {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a.tolist()},
                       {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b.tolist()}]}


async def rest_worker(i: int, url: str, stop: float, tally: Tally, scales: set[float]) -> None:
    rng = np.random.default_rng(i)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        n = 0
        while time.monotonic() < stop:
            n += 1
            model = ("add_sub", "scaler", CHURN)[n % 3]
            t0 = time.perf_counter()
            try:
                if model == "add_sub":
                    a, b = rng.integers(-1000, 1000, 16), rng.integers(-1000, 1000, 16)
                    r = await http.post("/v2/models/add_sub/infer", json=add_sub_rest_body(a, b))
                    good = r.status_code == 200 and r.json()["outputs"][0]["data"] == (a + b).tolist()
                elif model == "scaler":
                    r = await http.post("/v2/models/scaler/infer", json={"inputs": [
                        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]})
                    good = r.status_code == 200 and r.json()["outputs"][0]["data"][0] in scales
                else:
                    r = await http.post(f"/v2/models/{CHURN}/infer", json={"inputs": [
                        {"name": "x", "shape": [1, 5, 2], "datatype": "FP32", "data": [0.1] * 10}]})
                    good = r.status_code == 200
                    if r.status_code == 503:
                        tally.expected[f"rest {CHURN} 503"] += 1
                        continue
            except httpx.HTTPError as exc:
                tally.bad(f"rest {model}: {type(exc).__name__}: {exc}")
                continue
            tally.latency["rest"].append(time.perf_counter() - t0)
            if good:
                tally.ok[f"rest {model}"] += 1
            else:
                tally.bad(f"rest {model}: {r.status_code} {r.text[:200]}")


async def grpc_worker(i: int, addr: str, stop: float, tally: Tally, scales: set[float]) -> None:
    rng = np.random.default_rng(1000 + i)
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        n = 0
        while time.monotonic() < stop:
            n += 1
            model = ("add_sub", "scaler", CHURN)[n % 3]
            req = pb.ModelInferRequest(model_name=model)
            if model == "add_sub":
                a, b = rng.integers(-1000, 1000, 16).astype(np.int32), rng.integers(-1000, 1000, 16).astype(np.int32)
                for name, arr in (("INPUT0", a), ("INPUT1", b)):
                    req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
                    req.raw_input_contents.append(arr.tobytes())
            elif model == "scaler":
                req.inputs.add(name="x", datatype="FP32", shape=[1, 3])
                req.raw_input_contents.append(np.array([1, 2, 3], np.float32).tobytes())
            else:
                req.inputs.add(name="x", datatype="FP32", shape=[1, 5, 2])
                req.raw_input_contents.append(np.full(10, 0.1, np.float32).tobytes())
            t0 = time.perf_counter()
            try:
                resp = await stub.ModelInfer(req, timeout=30)
            except grpc.aio.AioRpcError as exc:
                if model == CHURN and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    tally.expected[f"grpc {CHURN} UNAVAILABLE"] += 1
                else:
                    tally.bad(f"grpc {model}: {exc.code().name} {exc.details()}")
                continue
            tally.latency["grpc"].append(time.perf_counter() - t0)
            out = resp.raw_output_contents
            if model == "add_sub":
                good = np.frombuffer(out[0], np.int32).tolist() == (a + b).tolist()
            elif model == "scaler":
                good = float(np.frombuffer(out[0], np.float32)[0]) in scales
            else:
                good = len(out) >= 1
            if good:
                tally.ok[f"grpc {model}"] += 1
            else:
                tally.bad(f"grpc {model}: wrong answer")


async def admin_worker(url: str, stop: float, tally: Tally, scales: set[float], period: float) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    version = 1
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as http:
        while time.monotonic() < stop - period:
            await asyncio.sleep(period)
            version += 1
            scales.add(float(version))   # announced before it can be served
            r = await http.put(f"/v2/repository/models/scaler/versions/{version}", content=scale_model(float(version)).SerializeToString())
            if r.status_code == 201:
                tally.ok["admin upload"] += 1
            else:
                tally.bad(f"upload v{version}: {r.status_code} {r.text[:200]}")
            r = await http.post(f"/v2/repository/models/{CHURN}/unload")
            await asyncio.sleep(period / 4)
            r2 = await http.post(f"/v2/repository/models/{CHURN}/load")
            if r.status_code == 200 and r2.status_code == 200:
                tally.ok["admin unload+load"] += 1
            else:
                tally.bad(f"unload/load: {r.status_code} {r2.status_code} {r2.text[:200]}")


async def run(args: argparse.Namespace, url: str, grpc_addr: str, pid: int) -> dict:
    tally = Tally()
    scales = {2.0}
    start = time.monotonic()
    warm_stop = start + args.warmup
    # Warm-up at full concurrency, then the measured run; RSS is taken after warm-up.
    n_rest = args.concurrency // 2
    await asyncio.gather(*[rest_worker(i, url, warm_stop, Tally(), scales) for i in range(n_rest)],
                         *[grpc_worker(i, grpc_addr, warm_stop, Tally(), scales) for i in range(args.concurrency - n_rest)])
    rss_start = rss_kib(pid)
    t0 = time.monotonic()
    stop = t0 + args.duration
    rss_samples = [rss_start]

    async def sample() -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(2)
            rss_samples.append(rss_kib(pid))

    await asyncio.gather(*[rest_worker(i, url, stop, tally, scales) for i in range(n_rest)],
                         *[grpc_worker(i, grpc_addr, stop, tally, scales) for i in range(args.concurrency - n_rest)],
                         admin_worker(url, stop, tally, scales, args.admin_period), sample())
    elapsed = time.monotonic() - t0
    rss_end = rss_kib(pid)
    lat = {k: sorted(v) for k, v in tally.latency.items()}
    total = sum(v for k, v in tally.ok.items() if not k.startswith("admin"))
    return {
        "duration_s": round(elapsed, 1), "concurrency": args.concurrency,
        "requests_ok": total, "requests_per_s": round(total / elapsed, 1),
        "by_kind": dict(tally.ok), "expected_unavailable": dict(tally.expected),
        "unexpected_errors": len(tally.unexpected), "unexpected_samples": tally.unexpected[:10],
        "latency_ms": {k: {"p50": round(1000 * statistics.median(v), 1), "p99": round(1000 * v[int(len(v) * 0.99)], 1)}
                       for k, v in lat.items() if v},
        "rss_kib": {"after_warmup": rss_start, "end": rss_end, "max": max(rss_samples)},
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--admin-period", type=float, default=3.0, help="seconds between upload/unload rounds")
    ap.add_argument("--max-rss-growth", type=float, default=10.0, help="percent")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modelbridge-soak-"))
    repo = work / "repo"
    for name in ("add_sub", CHURN):
        shutil.copytree(ROOT / "server" / "examples" / "repository" / name, repo / name)
    (repo / "scaler" / "1").mkdir(parents=True)
    (repo / "scaler" / "1" / "model.onnx").write_bytes(scale_model(2.0).SerializeToString())
    http_port, grpc_port = free_port(), free_port()
    log = open(work / "server.log", "wb")  # noqa: SIM115 - outlives this block: closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
         "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", "0", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "MODELBRIDGE_ADMIN_KEYS": ADMIN_KEY}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                print((work / "server.log").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        figures = asyncio.run(run(args, url, f"127.0.0.1:{grpc_port}", proc.pid))
        figures["server_alive"] = proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log.close()
    figures["server_exit_code"] = proc.returncode
    failed = (figures["unexpected_errors"] or not figures["server_alive"] or proc.returncode != 0
              or figures["rss_growth_pct"] >= args.max_rss_growth or not figures["by_kind"].get("admin upload"))
    figures["result"] = "FAIL" if failed else "PASS"
    print(json.dumps(figures, indent=2))
    if failed:
        print((work / "server.log").read_text()[-3000:], file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
