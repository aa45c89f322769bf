"""Prometheus metrics on the metrics port count real traffic per model and version."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from tests.deploy.helpers import add_sub_body, add_sub_ok, parse_metrics
from tests.support import ServerProcess, copy_repository


def test_metrics_after_traffic_show_the_right_counts(tmp_path: Path) -> None:
    server = ServerProcess(copy_repository(tmp_path / "repo", ["add_sub", "identity_types", "lstm_stream"])).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for batch, times in ((1, 5), (2, 3), (3, 1)):
                for _ in range(times):
                    r = http.post("/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(batch)))
                    assert r.status_code == 200 and add_sub_ok(r.json(), batch)
            for _ in range(2):  # the model takes 16 columns: refused by the model, counted as failures
                bad = http.post("/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(1, width=15)))
                assert bad.status_code == 400
            # Three sequences start on the stateful model; one ends: two stay live.
            for sid, end in (("a", False), ("b", True), ("c", False)):
                step = {"parameters": {"sequence_id": sid, "sequence_start": True, "sequence_end": end},
                        "inputs": [{"name": "x", "shape": [1, 1, 2], "datatype": "FP32", "data": [0.5, -0.5]}]}
                assert http.post("/v2/models/lstm_stream/infer", content=orjson.dumps(step)).status_code == 200
        text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    finally:
        server.stop()

    samples = parse_metrics(text)
    labels = frozenset({("model", "add_sub"), ("version", "1")})

    def value(name: str, extra: dict[str, str] | None = None) -> float:
        return samples[(name, labels | frozenset((extra or {}).items()))]

    assert value("nv_inference_request_success") == 9
    assert value("nv_inference_request_failure") == 2
    assert value("nv_inference_count") == 5 * 1 + 3 * 2 + 1 * 3
    assert value("nv_inference_exec_count") == 9
    assert value("nv_inference_batch_exec_count", {"batch_size": "1"}) == 5
    assert value("nv_inference_batch_exec_count", {"batch_size": "2"}) == 3
    assert value("nv_inference_batch_exec_count", {"batch_size": "3"}) == 1
    assert value("nv_inference_pending_request_count") == 0
    assert value("nv_inference_sequence_live_count") == 0
    stream = frozenset({("model", "lstm_stream"), ("version", "1")})
    assert samples[("nv_inference_sequence_live_count", stream)] == 2
    assert samples[("nv_inference_request_success", stream)] == 3
    for name in ("nv_inference_request_duration_us", "nv_inference_compute_infer_duration_us"):
        assert value(name) > 0, name
    # The durations add up: a request's time includes its compute time.
    assert value("nv_inference_request_duration_us") >= value("nv_inference_compute_infer_duration_us")
    # An untouched model is listed with zero counts, not left out.
    idle = frozenset({("model", "identity_types"), ("version", "1")})
    assert samples[("nv_inference_request_success", idle)] == 0
    for name in ("nv_inference_request_success", "nv_inference_pending_request_count"):
        assert f"# TYPE {name} " in text and f"# HELP {name} " in text
