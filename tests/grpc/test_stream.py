"""ModelStreamInfer through tritonclient's start_stream / async_stream_infer."""

from __future__ import annotations

import queue

import numpy as np
import tritonclient.grpc as grpcclient

from tests.grpc.test_infer import add_sub_inputs, make_input
from tests.support import ServerProcess


def test_stream_answers_every_request_in_order_and_survives_errors(server: ServerProcess) -> None:
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sent = {}
        for i in range(6):
            a = np.full((1, 16), i, np.int32)
            b = np.arange(16, dtype=np.int32).reshape(1, 16)
            sent[f"ok-{i}"] = (a, b)
            client.async_stream_infer("add_sub", add_sub_inputs(a, b), request_id=f"ok-{i}")
            if i == 2:   # a failing request in the middle must not end the stream
                bad = make_input("x", "FP32", np.zeros((1, 3, 5), np.float32))
                client.async_stream_infer("lstm_tiny", [bad], request_id="bad")
                client.async_stream_infer("nope", add_sub_inputs(a, b), request_id="missing")
        got = [results.get(timeout=30) for _ in range(8)]
    finally:
        client.stop_stream()
        client.close()

    answered = [r.get_response().id if r is not None else None for r, _ in got]
    assert answered == ["ok-0", "ok-1", "ok-2", None, None, "ok-3", "ok-4", "ok-5"]
    errors = [str(e) for _, e in got if e is not None]
    assert len(errors) == 2
    assert "input 'x'" in errors[0] and "expects shape" in errors[0]
    assert "unknown model 'nope'" in errors[1]
    for result, error in got:
        if result is None:
            continue
        a, b = sent[result.get_response().id]
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_stream_of_lstm_requests(server: ServerProcess) -> None:
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, t, 2)).astype(np.float32) for t in (1, 4, 9)]
    try:
        for i, x in enumerate(xs):
            client.async_stream_infer("lstm_tiny", [make_input("x", "FP32", x)], request_id=str(i))
        got = [results.get(timeout=30) for _ in xs]
    finally:
        client.stop_stream()
    unary = grpcclient.InferenceServerClient(server.grpc_addr)
    for (result, error), x in zip(got, xs):
        assert error is None
        expected = unary.infer("lstm_tiny", [make_input("x", "FP32", x)]).as_numpy("y")
        np.testing.assert_array_equal(result.as_numpy("y"), expected)
        assert result.as_numpy("y").shape == (1, x.shape[1], 4)
    unary.close()


def test_stream_a_stateful_lstm_step_by_step(server: ServerProcess) -> None:
    """The natural use of the stream: feed a recurrent model one time step per message; the server
    carries the state (sequence_id); the steps equal the whole sequence run at once."""
    import onnxruntime as ort

    from tests.support import EXAMPLES

    x = np.random.default_rng(21).standard_normal((1, 7, 2)).astype(np.float32)
    whole = ort.InferenceSession(str(EXAMPLES / "lstm_tiny" / "1" / "model.onnx"),
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for t in range(7):
            client.async_stream_infer("lstm_stream", [make_input("x", "FP32", x[:, t:t + 1])], request_id=f"t{t}",
                                      sequence_id=4242, sequence_start=t == 0, sequence_end=t == 6)
        got = [results.get(timeout=30) for _ in range(7)]
    finally:
        client.stop_stream()
        client.close()
    assert [e for _, e in got] == [None] * 7
    assert [r.get_response().id for r, _ in got] == [f"t{t}" for t in range(7)]
    steps = np.concatenate([r.as_numpy("y") for r, _ in got], axis=1)
    np.testing.assert_allclose(steps, whole, atol=1e-5)


def test_asyncio_client_unary_and_stream(server: ServerProcess) -> None:
    import asyncio

    import tritonclient.grpc.aio as aioclient

    async def main() -> tuple[list, list]:
        client = aioclient.InferenceServerClient(server.grpc_addr)
        try:
            def inputs(k: int) -> list:
                made = [aioclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                made[0].set_data_from_numpy(np.full((1, 16), k, np.int32))
                made[1].set_data_from_numpy(np.ones((1, 16), np.int32))
                return made

            # Many calls in flight at once on one channel.
            unary = await asyncio.gather(*(client.infer("add_sub", inputs(k), request_id=str(k)) for k in range(12)))

            async def requests():
                for k in range(4):
                    yield {"model_name": "add_sub", "inputs": inputs(k), "request_id": f"s{k}"}

            streamed = [item async for item in client.stream_infer(requests())]
            return unary, streamed
        finally:
            await client.close()

    unary, streamed = asyncio.run(main())
    for k, res in enumerate(unary):
        assert res.get_response().id == str(k)
        np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), np.full((1, 16), k + 1, np.int32))
    assert [(r.get_response().id, e) for r, e in streamed] == [(f"s{k}", None) for k in range(4)]
    np.testing.assert_array_equal(streamed[3][0].as_numpy("OUTPUT1"), np.full((1, 16), 2, np.int32))
