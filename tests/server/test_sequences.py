"""Stateful sequences over REST: the server keeps h and c between steps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.support import EXAMPLES, ServerProcess, copy_repository


def whole_sequence(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(EXAMPLES / "lstm_tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def step_body(x_t: np.ndarray, sid: int | str, *, start: bool = False, end: bool = False) -> dict:
    params: dict = {"sequence_id": sid}
    if start:
        params["sequence_start"] = True
    if end:
        params["sequence_end"] = True
    return {"parameters": params, "inputs": [
        {"name": "x", "shape": list(x_t.shape), "datatype": "FP32", "data": x_t.reshape(-1).tolist()}]}


def y_of(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert [o["name"] for o in out] == ["y"], "state outputs must stay hidden"
    return np.array(out[0]["data"], np.float32).reshape(out[0]["shape"])


def test_metadata_hides_state_and_config_reports_sequence_batching(server: ServerProcess) -> None:
    meta = httpx.get(server.url + "/v2/models/lstm_stream").json()
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    assert [o["name"] for o in meta["outputs"]] == ["y"]
    cfg = httpx.get(server.url + "/v2/models/lstm_stream/config").json()
    states = cfg["sequence_batching"]["state"]
    assert [(s["input_name"], s["output_name"]) for s in states] == [("h0", "hn"), ("c0", "cn")]
    assert "sequence" in httpx.get(server.url + "/v2").json()["extensions"]


@pytest.mark.parametrize("sid", [7, "user-42"])
def test_step_by_step_equals_whole_sequence(server: ServerProcess, sid: int | str) -> None:
    x = np.random.default_rng(11).standard_normal((1, 9, 2)).astype(np.float32)
    with httpx.Client(base_url=server.url) as http:
        steps = [y_of(http.post("/v2/models/lstm_stream/infer",
                                json=step_body(x[:, t:t + 1], sid, start=t == 0, end=t == 8))) for t in range(9)]
        # chunks of several steps continue the same state
        chunks = [y_of(http.post("/v2/models/lstm_stream/infer", json=step_body(x[:, a:b], sid, start=a == 0)))
                  for a, b in ((0, 4), (4, 5), (5, 9))]
    np.testing.assert_allclose(np.concatenate(steps, 1), whole_sequence(x), atol=1e-5)
    np.testing.assert_allclose(np.concatenate(chunks, 1), whole_sequence(x), atol=1e-5)


def test_sixteen_interleaved_sequences_do_not_mix(server: ServerProcess) -> None:
    rng = np.random.default_rng(12)
    xs = {sid: rng.standard_normal((1, 6, 2)).astype(np.float32) for sid in range(100, 116)}

    async def run_sequence(client: httpx.AsyncClient, sid: int) -> np.ndarray:
        ys = []
        for t in range(6):
            r = await client.post("/v2/models/lstm_stream/infer",
                                  json=step_body(xs[sid][:, t:t + 1], sid, start=t == 0, end=t == 5))
            ys.append(y_of(r))
        return np.concatenate(ys, 1)

    async def main() -> list[np.ndarray]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(run_sequence(client, sid) for sid in xs))

    before = httpx.get(server.url + "/v2/models/lstm_stream/stats").json()["model_stats"][0]
    results = asyncio.run(main())
    for sid, got in zip(xs, results):
        np.testing.assert_allclose(got, whole_sequence(xs[sid]), atol=1e-5, err_msg=f"sequence {sid}")
    after = httpx.get(server.url + "/v2/models/lstm_stream/stats").json()["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 96
    assert after["execution_count"] - before["execution_count"] < 96, "steps of different sequences should batch"


def test_sequence_errors(server: ServerProcess) -> None:
    x = np.zeros((1, 1, 2), np.float32)
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/v2/models/lstm_stream/infer", json={"inputs": step_body(x, 1)["inputs"]})
        assert r.status_code == 400 and "sequence_id" in r.json()["error"]
        r = http.post("/v2/models/lstm_stream/infer", json=step_body(x, 987654))
        assert r.status_code == 400 and "sequence 987654" in r.json()["error"]
        assert "sequence_start" in r.json()["error"]
        r = http.post("/v2/models/lstm_stream/infer", json=step_body(x, 55, start=True, end=True))
        assert r.status_code == 200
        r = http.post("/v2/models/lstm_stream/infer", json=step_body(x, 55))
        assert r.status_code == 400, "an ended sequence must not continue"
        http.post("/v2/models/lstm_stream/infer", json=step_body(x, 56, start=True))
        r = http.post("/v2/models/lstm_stream/infer", json=step_body(np.zeros((2, 1, 2), np.float32), 56))
        assert r.status_code == 400 and "batch size" in r.json()["error"]
        bad = step_body(x, 57, start=True)
        bad["parameters"]["sequence_start"] = "yes"
        assert http.post("/v2/models/lstm_stream/infer", json=bad).status_code == 400


def test_idle_expiry_cap_and_restart(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo", ["lstm_stream"])
    proc = ServerProcess(repo, ["--sequence-idle-secs", "1", "--max-sequences", "2"]).start()
    x = np.zeros((1, 1, 2), np.float32)
    try:
        with httpx.Client(base_url=proc.url) as http:
            assert http.post("/v2/models/lstm_stream/infer", json=step_body(x, 1, start=True)).status_code == 200
            assert http.post("/v2/models/lstm_stream/infer", json=step_body(x, 2, start=True)).status_code == 200
            r = http.post("/v2/models/lstm_stream/infer", json=step_body(x, 3, start=True))
            assert r.status_code == 429 and "too many live sequences" in r.json()["error"]
            assert "retry-after" in r.headers
            time.sleep(1.5)
            r = http.post("/v2/models/lstm_stream/infer", json=step_body(x, 1))
            assert r.status_code == 400 and "expired" in r.json()["error"]
            assert http.post("/v2/models/lstm_stream/infer", json=step_body(x, 3, start=True)).status_code == 200
        proc.stop()
        proc.start()
        with httpx.Client(base_url=proc.url) as http:
            r = http.post("/v2/models/lstm_stream/infer", json=step_body(x, 3))
            assert r.status_code == 400 and "restart" in r.json()["error"]
    finally:
        proc.stop()
