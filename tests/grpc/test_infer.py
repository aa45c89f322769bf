"""Inference with tritonclient.grpc against the real server: datatypes, outputs, ids, errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from tests.grpc.samples import random_tensor
from tests.support import EXAMPLES

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]


def reference(model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(EXAMPLES / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def make_input(name: str, datatype: str, data: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return inp


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    return [make_input("INPUT0", "INT32", a), make_input("INPUT1", "INT32", b)]


def test_add_sub_equals_onnxruntime_and_echoes_the_id(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    res = client.infer("add_sub", add_sub_inputs(a, b), request_id="req-42")
    ref = reference("add_sub", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), ref["OUTPUT0"])
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), ref["OUTPUT1"])
    response = res.get_response()
    assert response.id == "req-42"
    assert response.model_name == "add_sub" and response.model_version == "1"
    assert [o.datatype for o in response.outputs] == ["INT32", "INT32"]
    assert [list(o.shape) for o in response.outputs] == [[2, 16], [2, 16]]


def test_explicit_version(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 16), np.int32)
    res = client.infer("add_sub", add_sub_inputs(a, a), model_version="1")
    assert res.get_response().model_version == "1"


def test_output_selection_returns_only_what_was_asked(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 16), np.int32)
    res = client.infer("add_sub", add_sub_inputs(a, a), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in res.get_response().outputs] == ["OUTPUT1"]
    assert len(res.get_response().raw_output_contents) == 1
    assert res.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), np.zeros((1, 16), np.int32))


def test_every_datatype_round_trips(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(7)
    data = {dt: random_tensor(dt, [2, 3], rng) for dt in DATATYPES}
    inputs = [make_input(f"IN_{dt}", dt, arr) for dt, arr in data.items()]
    res = client.infer("identity_types", inputs)
    outputs = {o.name: o for o in res.get_response().outputs}
    for dt, arr in data.items():
        assert outputs[f"OUT_{dt}"].datatype == dt
        got = res.as_numpy(f"OUT_{dt}")
        assert got.shape == arr.shape, dt
        if dt == "BYTES":
            assert list(got.reshape(-1)) == list(arr.reshape(-1))
        else:
            assert got.dtype == arr.dtype, dt
            np.testing.assert_array_equal(got, arr, err_msg=dt)


def test_lstm_equals_onnxruntime(client: grpcclient.InferenceServerClient) -> None:
    x = np.random.default_rng(0).standard_normal((3, 5, 2)).astype(np.float32)
    res = client.infer("lstm_tiny", [make_input("x", "FP32", x)])
    np.testing.assert_array_equal(res.as_numpy("y"), reference("lstm_tiny", {"x": x})["y"])


def test_request_parameters_are_accepted(client: grpcclient.InferenceServerClient) -> None:
    # tritonclient sends priority as uint64_param and custom values as bool/int/string params.
    a = np.ones((1, 16), np.int32)
    res = client.infer("add_sub", add_sub_inputs(a, a), priority=1, timeout=10_000_000,
                       parameters={"flag": True, "count": 3, "label": "x"})
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + a)


def expect_error(status: str, match: str):
    import re

    class Check:
        def __enter__(self) -> None:
            return None

        def __exit__(self, typ, exc, tb) -> bool:
            assert isinstance(exc, grpcclient.InferenceServerException), f"no error, expected {status}"
            assert exc.status() == f"StatusCode.{status}", exc
            assert re.search(match, exc.message()), exc.message()
            return True

    return Check()


def test_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 16), np.int32)
    with expect_error("NOT_FOUND", "unknown model 'nope'"):
        client.infer("nope", add_sub_inputs(a, a))
    with expect_error("NOT_FOUND", "version 3"):
        client.infer("add_sub", add_sub_inputs(a, a), model_version="3")


def test_wrong_shape_names_the_input(client: grpcclient.InferenceServerClient) -> None:
    bad = make_input("x", "FP32", np.zeros((1, 3, 5), np.float32))
    with expect_error("INVALID_ARGUMENT", r"input 'x'.*expects shape \[-1, -1, 2\], got \[1, 3, 5\]"):
        client.infer("lstm_tiny", [bad])
    too_big_batch = np.zeros((9, 16), np.int32)
    with expect_error("INVALID_ARGUMENT", "input 'INPUT0'.*batch size 9"):
        client.infer("add_sub", add_sub_inputs(too_big_batch, too_big_batch))


def test_wrong_datatype_names_the_input(client: grpcclient.InferenceServerClient) -> None:
    wrong = make_input("x", "FP64", np.zeros((1, 3, 2), np.float64))
    with expect_error("INVALID_ARGUMENT", "input 'x'.*expects datatype FP32, got FP64"):
        client.infer("lstm_tiny", [wrong])


def test_missing_unknown_and_unrequestable_tensors(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 16), np.int32)
    with expect_error("INVALID_ARGUMENT", "INPUT1"):
        client.infer("add_sub", [make_input("INPUT0", "INT32", a)])
    with expect_error("INVALID_ARGUMENT", "unexpected input 'EXTRA'"):
        client.infer("add_sub", [*add_sub_inputs(a, a), make_input("EXTRA", "INT32", a)])
    with expect_error("INVALID_ARGUMENT", "unknown output 'NOPE'"):
        client.infer("add_sub", add_sub_inputs(a, a), outputs=[grpcclient.InferRequestedOutput("NOPE")])


def test_data_size_must_match_the_shape(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 16), np.int32)
    liar = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    liar.set_data_from_numpy(a)
    # tritonclient checks shapes itself, so the lie (two rows, data for one) is told afterwards.
    liar.set_shape([2, 16])
    with expect_error("INVALID_ARGUMENT", r"input 'INPUT0'.*needs 128 bytes, got 64"):
        client.infer("add_sub", [liar, make_input("INPUT1", "INT32", np.ones((2, 16), np.int32))])


def test_unknown_datatype_is_refused(client: grpcclient.InferenceServerClient) -> None:
    bogus = grpcclient.InferInput("x", [1, 1, 2], "FP32")
    bogus.set_data_from_numpy(np.zeros((1, 1, 2), np.float32))
    bogus._input.datatype = "FLOAT"   # tritonclient validates datatypes; go around it to test the server
    with expect_error("INVALID_ARGUMENT", "unknown datatype 'FLOAT'"):
        client.infer("lstm_tiny", [bogus])


def test_compressed_requests(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    for algorithm in ("gzip", "deflate"):
        res = client.infer("add_sub", add_sub_inputs(a, a), compression_algorithm=algorithm)
        np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), 2 * a)
