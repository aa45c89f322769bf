"""The targets the shared harness does not measure: dynamic batching at concurrency 32, time to ready,
and RSS across 200k requests; and the gRPC port served by grpcio (--grpc-engine grpcio) next to our
HTTP/2 layer, in the same run. Server on CPU 0, load on CPU 1, as in the harness.

usage: .venv/bin/python bench/extra.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import h2load, layout, rss_kib, start_server, stop, wrk

CEILING = """
import sys, time, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = np.random.rand(1, 50, 1).astype(np.float32)
for _ in range(300): s.run(None, {"x": x})
n = 3000; t = time.perf_counter()
for _ in range(n): s.run(None, {"x": x})
print(round(n / (time.perf_counter() - t)))
"""
BATCHING = "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 500 }\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--secs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = layout(work, {"lstm": BATCHING})
        proc, ready = start_server(repo, 18290, 18291)
        print(f"time to ready (example-sized repository of 2 models): {ready:.2f} s")
        try:
            # The VM's speed drifts between runs: measure the one-call-at-a-time ceiling right here.
            ceiling = subprocess.run(
                ["taskset", "-c", "0", sys.executable, "-c", CEILING, str(work / "lstm.onnx")],
                capture_output=True, text=True, check=True).stdout.strip()
            print(f"in-process ceiling, lstm, measured now: {ceiling} calls/s")
            for c in (8, 32):
                r = wrk("http://127.0.0.1:18290/v2/models/lstm/infer", work / "lstm.json", conns=c, secs=args.secs)
                print(f"lstm + dynamic batching, REST c={c}: {r['rps']:.0f} sequences/s (non200={r['non200']})")
            g = h2load("http://127.0.0.1:18291/inference.GRPCInferenceService/ModelInfer", work / "lstm.grpc",
                       streams=32, secs=args.secs)
            print(f"lstm + dynamic batching, gRPC 32 streams: {g['rps']:.0f} sequences/s")
            wrk("http://127.0.0.1:18290/v2/models/mlp/infer", work / "mlp.json", conns=8, secs=3)
            before = rss_kib(proc.pid)
            done = 0
            while done < args.requests:
                done += wrk("http://127.0.0.1:18290/v2/models/mlp/infer", work / "mlp.json", conns=8,
                            secs=5)["requests"]
            after = rss_kib(proc.pid)
            print(f"RSS across {done} mlp requests: {before} KiB -> {after} KiB "
                  f"({(after - before) / before * 100:+.1f} %)")
        finally:
            stop(proc)
        engines(work, args.secs)


def engines(work: Path, secs: int) -> None:
    """The gRPC rows of the harness (no config files, 8 streams) with each engine serving the port."""
    (work / "engines").mkdir()
    repo = layout(work / "engines", {})
    for engine in ("h2", "grpcio"):
        proc, _ = start_server(repo, 18292, 18293, extra=["--grpc-engine", engine])
        try:
            for model in ("mlp", "lstm"):
                g = h2load("http://127.0.0.1:18293/inference.GRPCInferenceService/ModelInfer", work / "engines" / f"{model}.grpc",
                           streams=8, secs=secs)
                print(f"gRPC engine {engine:6s} {model:4s} 8 streams: {g['rps']:.0f} req/s")
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
