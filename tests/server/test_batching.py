"""Dynamic batching: batched answers equal unbatched ones; shapes never mix; one bad request fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.support import EXAMPLES, ServerProcess, copy_repository

CONFIG = """max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 50000 }
"""


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = copy_repository(tmp_path_factory.mktemp("batching") / "repo", ["lstm_tiny", "add_sub", "autoencoder"])
    for model in ("lstm_tiny", "add_sub", "autoencoder"):
        (repo / model / "config.pbtxt").write_text(CONFIG)
    proc = ServerProcess(repo).start()
    yield proc
    proc.stop()


def lstm_reference(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(EXAMPLES / "lstm_tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}


async def send_all(url: str, payloads: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post("/v2/models/lstm_tiny/infer", json=p) for p in payloads))


def stats(url: str) -> dict:
    return httpx.get(url + "/v2/models/lstm_tiny/stats").json()["model_stats"][0]


def test_batched_answers_equal_unbatched(batching_server: ServerProcess) -> None:
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 4, 2)).astype(np.float32) for _ in range(16)]
    before = stats(batching_server.url)
    responses = asyncio.run(send_all(batching_server.url, [body(x) for x in xs]))
    for x, r in zip(xs, responses):
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4, 4)
        np.testing.assert_allclose(got, lstm_reference(x), atol=1e-6)
    after = stats(batching_server.url)
    executions = after["execution_count"] - before["execution_count"]
    inferences = after["inference_count"] - before["inference_count"]
    assert inferences == 16
    assert executions < 16, "16 concurrent requests should have been batched"
    assert any(b["batch_size"] > 1 for b in after["batch_stats"])


def test_mixed_shapes_and_batch_sizes_never_mix(batching_server: ServerProcess) -> None:
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((b, t, 2)).astype(np.float32) for b, t in
          [(1, 3), (2, 5), (1, 5), (3, 3), (1, 7), (2, 3), (1, 3), (4, 5)]]
    responses = asyncio.run(send_all(batching_server.url, [body(x) for x in xs]))
    for x, r in zip(xs, responses):
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [x.shape[0], x.shape[1], 4]
        got = np.array(out["data"], np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, lstm_reference(x), atol=1e-6)


def test_a_bad_request_fails_alone(batching_server: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    good = [rng.standard_normal((1, 4, 2)).astype(np.float32) for _ in range(6)]
    payloads = [body(x) for x in good]
    payloads.insert(3, {"inputs": [{"name": "x", "shape": [1, 4, 3], "datatype": "FP32", "data": [0.0] * 12}]})
    payloads.insert(5, {"inputs": [{"name": "x", "shape": [9, 1, 2], "datatype": "FP32", "data": [0.0] * 18}]})
    responses = asyncio.run(send_all(batching_server.url, payloads))
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 200, 400, 200, 200]
    assert "expects shape" in responses[3].json()["error"]
    assert "batch size 9" in responses[5].json()["error"]
    oks = [r for r in responses if r.status_code == 200]
    for x, r in zip(good, oks):
        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4, 4)
        np.testing.assert_allclose(got, lstm_reference(x), atol=1e-6)


def test_batching_preserves_integer_results(batching_server: ServerProcess) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=batching_server.url, timeout=30) as client:
            reqs = []
            for k in range(12):
                a = [k] * 16
                reqs.append(client.post("/v2/models/add_sub/infer", json={"inputs": [
                    {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
                    {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}],
                    "outputs": [{"name": "OUTPUT1"}]}))
            return await asyncio.gather(*reqs)

    for k, r in enumerate(asyncio.run(run())):
        assert r.status_code == 200
        assert [o["name"] for o in r.json()["outputs"]] == ["OUTPUT1"]
        assert r.json()["outputs"][0]["data"] == [k - 1] * 16


def test_config_reports_dynamic_batching(batching_server: ServerProcess) -> None:
    cfg = httpx.get(batching_server.url + "/v2/models/lstm_tiny/config").json()
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 50000
    assert cfg["max_batch_size"] == 8




def test_slow_model_batches_on_a_worker_thread(batching_server: ServerProcess) -> None:
    """The autoencoder's runs take milliseconds, so they leave the event loop for a worker thread
    (runtime.OFFLOAD_NS); batched answers must still equal unbatched onnxruntime."""
    sess = ort.InferenceSession(str(EXAMPLES / "autoencoder" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(4)
    xs = [rng.random((1, 784), dtype=np.float32) for _ in range(24)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=batching_server.url, timeout=60) as client:
            first = await client.post("/v2/models/autoencoder/infer", json={"inputs": [
                {"name": name, "shape": [1, 784], "datatype": "FP32", "data": xs[0].reshape(-1).tolist()}]})
            rest = await asyncio.gather(*(client.post("/v2/models/autoencoder/infer", json={"inputs": [
                {"name": name, "shape": [1, 784], "datatype": "FP32", "data": x.reshape(-1).tolist()}]})
                for x in xs[1:]))
            return [first, *rest]

    before = httpx.get(batching_server.url + "/v2/models/autoencoder/stats").json()["model_stats"][0]
    for x, r in zip(xs, asyncio.run(run())):
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]),
                                   sess.run(None, {name: x})[0], atol=1e-5)
    after = httpx.get(batching_server.url + "/v2/models/autoencoder/stats").json()["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 24
    assert after["execution_count"] - before["execution_count"] < 24
