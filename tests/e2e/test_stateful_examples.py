"""The stateful examples on the real server: one step per request equals the whole sequence at once.

For each step-form example (Keras LSTM, TF1 BasicLSTMCell, PyTorch stacked GRU) a sequence is fed
one time step per request under a sequence_id over REST, gRPC unary and the gRPC stream, and every
step's answer is compared (1e-5) with the whole sequence sent in one request.  The committed ONNX
files are also run directly in onnxruntime (prefix by prefix, from zero state) so that a server that
answered every step from a fresh state could not pass.  No framework is imported: the models were
built by examples/<name>/build.py.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from tests.support import EXAMPLES, ROOT, ServerProcess, copy_repository

# model → (input name, features, output name, does the output have a time axis)
MODELS = {
    "sine_lstm_stream": ("sample", 1, "next_value", False),
    "tf_basic_lstm_stream": ("sequence", 2, "prediction", True),
    "gru_stack_stream": ("noisy", 1, "output", True),
}
STEPS = 14
ATOL = 1e-5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = copy_repository(tmp_path_factory.mktemp("stateful") / "models", list(MODELS))
    proc = ServerProcess(repo).start()
    yield proc
    proc.stop()


def sequence_of(model: str) -> np.ndarray:
    _, features, _, _ = MODELS[model]
    rng = np.random.default_rng(sorted(MODELS).index(model))
    t = rng.uniform(0, 6.3) + 0.1 * np.arange(STEPS)
    return (np.sin(t)[None, :, None] + 0.2 * rng.standard_normal((1, STEPS, features))).astype(np.float32)


def onnx_prefixes(model: str, x: np.ndarray) -> list[np.ndarray]:
    """The answer after each prefix of ``x``, each run whole from zero state, straight from the file."""
    path = EXAMPLES / model / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, _, output, _ = MODELS[model]
    props = session.get_modelmeta().custom_metadata_map
    pairs = json.loads(props["modelbridge.state"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    zeros = {pair["input"]: np.zeros((x.shape[0], *shapes[pair["input"]][1:]), np.float32) for pair in pairs}
    return [session.run([output], {name: x[:, : t + 1], **zeros})[0] for t in range(x.shape[1])]


def step_of(model: str, answer: np.ndarray) -> np.ndarray:
    """The part of a whole-sequence answer that a single step answers: its last time step."""
    return answer[:, -1:] if MODELS[model][3] else answer


def rest_body(model: str, x: np.ndarray, sid: int | str, *, start: bool, end: bool) -> dict:
    params: dict = {"sequence_id": sid}
    if start:
        params["sequence_start"] = True
    if end:
        params["sequence_end"] = True
    name = MODELS[model][0]
    return {"parameters": params,
            "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}


def rest_answer(response: httpx.Response, model: str) -> np.ndarray:
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == [MODELS[model][2]], "state outputs must stay hidden from clients"
    return np.array(outputs[0]["data"], np.float32).reshape(outputs[0]["shape"])


def grpc_input(model: str, x: np.ndarray) -> list[grpcclient.InferInput]:
    made = grpcclient.InferInput(MODELS[model][0], list(x.shape), "FP32")
    made.set_data_from_numpy(x)
    return [made]


def check_steps(model: str, steps: list[np.ndarray], whole: np.ndarray, prefixes: list[np.ndarray]) -> None:
    assert len(steps) == STEPS
    for t, (got, expected) in enumerate(zip(steps, prefixes, strict=True)):
        np.testing.assert_allclose(got, step_of(model, expected), atol=ATOL, err_msg=f"{model} step {t}")
    if MODELS[model][3]:
        np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=ATOL, err_msg=model)
    else:
        np.testing.assert_allclose(steps[-1], whole, atol=ATOL, err_msg=model)


@pytest.fixture(scope="module")
def whole_answers(server: ServerProcess) -> dict[str, tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Per model: the sequence, the server's answer to it whole in one request, the file's prefix answers."""
    answers = {}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for model in MODELS:
            x = sequence_of(model)
            body = rest_body(model, x, f"whole-{model}", start=True, end=True)
            whole = rest_answer(http.post(f"/v2/models/{model}/infer", json=body), model)
            prefixes = onnx_prefixes(model, x)
            np.testing.assert_allclose(whole, prefixes[-1], atol=ATOL, err_msg=f"{model}: server vs onnxruntime")
            answers[model] = (x, whole, prefixes)
    return answers


def test_metadata_hides_the_state_and_config_lists_it(server: ServerProcess) -> None:
    for model, (name, _, output, _) in MODELS.items():
        meta = httpx.get(f"{server.url}/v2/models/{model}").json()
        assert [i["name"] for i in meta["inputs"]] == [name]
        assert [o["name"] for o in meta["outputs"]] == [output]
        states = httpx.get(f"{server.url}/v2/models/{model}/config").json()["sequence_batching"]["state"]
        props = ort.InferenceSession(str(EXAMPLES / model / "1" / "model.onnx"),
                                     providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        pairs = json.loads(props["modelbridge.state"])
        assert [(s["input_name"], s["output_name"]) for s in states] == [(p["input"], p["output"]) for p in pairs]
    # The stacked GRU carries one state per layer; the LSTMs carry h and c.
    assert len(json.loads(ort.InferenceSession(str(EXAMPLES / "gru_stack_stream" / "1" / "model.onnx"),
                                               providers=["CPUExecutionProvider"])
                          .get_modelmeta().custom_metadata_map["modelbridge.state"])) == 2


@pytest.mark.parametrize("model", list(MODELS))
def test_rest_one_step_per_request(server: ServerProcess, whole_answers: dict, model: str) -> None:
    x, whole, prefixes = whole_answers[model]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        steps = [rest_answer(http.post(f"/v2/models/{model}/infer",
                                       json=rest_body(model, x[:, t:t + 1], f"rest-{model}",
                                                      start=t == 0, end=t == STEPS - 1)), model)
                 for t in range(STEPS)]
    check_steps(model, steps, whole, prefixes)


@pytest.mark.parametrize("model", list(MODELS))
def test_grpc_unary_one_step_per_request(server: ServerProcess, whole_answers: dict, model: str) -> None:
    x, whole, prefixes = whole_answers[model]
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    try:
        results = [client.infer(model, grpc_input(model, x[:, t:t + 1]), sequence_id=1000 + list(MODELS).index(model),
                                sequence_start=t == 0, sequence_end=t == STEPS - 1)
                   for t in range(STEPS)]
    finally:
        client.close()
    assert [out.name for out in results[0].get_response().outputs] == [MODELS[model][2]]
    check_steps(model, [result.as_numpy(MODELS[model][2]) for result in results], whole, prefixes)


def test_grpc_stream_interleaves_every_model_step_by_step(server: ServerProcess, whole_answers: dict) -> None:
    """All three models' sequences on one stream, their steps interleaved: no state leaks between them."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for t in range(STEPS):
            for k, model in enumerate(MODELS):
                x = whole_answers[model][0]
                client.async_stream_infer(model, grpc_input(model, x[:, t:t + 1]), request_id=f"{model}/{t}",
                                          sequence_id=f"stream-{k}", sequence_start=t == 0,
                                          sequence_end=t == STEPS - 1)
        got = [results.get(timeout=60) for _ in range(STEPS * len(MODELS))]
    finally:
        client.stop_stream()
        client.close()
    assert [str(error) for _, error in got if error is not None] == []
    answered: dict[str, dict[int, np.ndarray]] = {model: {} for model in MODELS}
    for result, _ in got:
        model, t = result.get_response().id.split("/")
        answered[model][int(t)] = result.as_numpy(MODELS[model][2])
    for model, steps in answered.items():
        _, whole, prefixes = whole_answers[model]
        check_steps(model, [steps[t] for t in range(STEPS)], whole, prefixes)


def test_a_fresh_state_would_differ(whole_answers: dict) -> None:
    """Guard on the comparison itself: a step answered from zero state is far from the carried one."""
    for model, (x, _, prefixes) in whole_answers.items():
        fresh = onnx_prefixes(model, x[:, -1:])[0]
        assert np.max(np.abs(fresh - step_of(model, prefixes[-1]))) > 100 * ATOL, model


@pytest.mark.parametrize("model", list(MODELS))
def test_readme_streaming_snippet_runs(server: ServerProcess, model: str) -> None:
    """Each example README's tritonclient snippet, as committed, streams 20 steps against the server."""
    readme = (ROOT / "examples" / model / "README.md").read_text()
    found = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert found, f"{model}: README has no streaming snippet"
    scope: dict = {}
    exec(found.group(1).replace("localhost:8001", server.grpc_addr), scope)  # noqa: S102 (our own README)
    answers = scope["answers"]
    assert len(answers) == 20 and not [a for a in answers if isinstance(a, Exception)], answers
    assert all(np.isfinite(a).all() for a in answers)


def test_concurrent_sequences_of_the_stacked_gru_batch_without_mixing_state(server: ServerProcess) -> None:
    """12 clients stream their own signals at once: each layer's state stays with its sequence while the
    server batches steps of different sequences into shared onnxruntime calls."""
    model, steps = "gru_stack_stream", 8
    rng = np.random.default_rng(40)
    xs = {f"conc-{k}": rng.standard_normal((1, steps, 1)).astype(np.float32) for k in range(12)}

    async def run_sequence(client: httpx.AsyncClient, sid: str) -> np.ndarray:
        answers = []
        for t in range(steps):
            body = rest_body(model, xs[sid][:, t:t + 1], sid, start=t == 0, end=t == steps - 1)
            answers.append(rest_answer(await client.post(f"/v2/models/{model}/infer", json=body), model))
        return np.concatenate(answers, axis=1)

    async def main() -> list[np.ndarray]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(run_sequence(client, sid) for sid in xs))

    stats = f"{server.url}/v2/models/{model}/stats"
    before = httpx.get(stats).json()["model_stats"][0]
    results = asyncio.run(main())
    after = httpx.get(stats).json()["model_stats"][0]
    for sid, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, onnx_prefixes(model, xs[sid])[-1], atol=ATOL, err_msg=sid)
    assert after["inference_count"] - before["inference_count"] == 12 * steps
    assert after["execution_count"] - before["execution_count"] < 12 * steps, "steps of sequences should batch"
