"""Triton's own HTTP client against the real server: every call, binary and JSON tensors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support import EXAMPLES, ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_addr)


def reference(model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(EXAMPLES / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "modelbridge"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_ready_metadata_config(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_model_metadata("add_sub")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    cfg = client.get_model_config("add_sub")
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][0]["data_type"] == "TYPE_INT32" and cfg["input"][0]["dims"] == [16]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_add_sub(client: httpclient.InferenceServerClient, binary: bool) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [2, 16], "INT32"), httpclient.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    res = client.infer("add_sub", inputs, outputs=outputs, request_id="req-42")
    ref = reference("add_sub", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), ref["OUTPUT0"])
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), ref["OUTPUT1"])
    assert res.get_response()["id"] == "req-42"


def test_output_selection(client: httpclient.InferenceServerClient) -> None:
    a = np.ones((1, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    for i in inputs:
        i.set_data_from_numpy(a)
    res = client.infer("add_sub", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert res.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), np.zeros((1, 16), np.int32))


SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-32768, 0, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], np.float16),
    "FP32": np.array([[-1.5, 1e-30, 3.4e38]], np.float32),
    "FP64": np.array([[-1.5, 1e-300, 1.7e308]], np.float64),
    "BYTES": np.array([[b"hello", b"", "ünï".encode()]], dtype=object),
}


@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(client: httpclient.InferenceServerClient, binary: bool) -> None:
    inputs, outputs = [], []
    for dtype, data in SAMPLES.items():
        inp = httpclient.InferInput(f"IN_{dtype}", list(data.shape), dtype)
        inp.set_data_from_numpy(data, binary_data=binary)
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"OUT_{dtype}", binary_data=binary))
    res = client.infer("identity_types", inputs, outputs=outputs)
    for dtype, data in SAMPLES.items():
        out = res.as_numpy(f"OUT_{dtype}")
        if dtype == "BYTES":
            got = [v if isinstance(v, bytes) else str(v).encode() for v in out.reshape(-1)]
            assert got == list(data.reshape(-1)), dtype
        else:
            assert out.dtype == data.dtype, dtype
            np.testing.assert_array_equal(out, data, err_msg=dtype)


def test_lstm_equals_in_process_onnxruntime(client: httpclient.InferenceServerClient) -> None:
    x = np.random.default_rng(0).standard_normal((3, 5, 2)).astype(np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("lstm_tiny", [inp])
    np.testing.assert_array_equal(res.as_numpy("y"), reference("lstm_tiny", {"x": x})["y"])


def test_statistics_count_inferences(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("lstm_tiny")["model_stats"][0]
    x = np.zeros((2, 3, 2), np.float32)
    inp = httpclient.InferInput("x", [2, 3, 2], "FP32")
    inp.set_data_from_numpy(x)
    client.infer("lstm_tiny", [inp])
    after = client.get_inference_statistics("lstm_tiny")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["execution_count"] == before["execution_count"] + 1
    assert after["last_inference"] >= before["last_inference"]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nope")


def test_infer_errors_name_the_input(client: httpclient.InferenceServerClient) -> None:
    bad = httpclient.InferInput("x", [1, 3, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 5), np.float32))
    with pytest.raises(InferenceServerException, match=r"input 'x'.*expects shape \[-1, -1, 2\], got \[1, 3, 5\]"):
        client.infer("lstm_tiny", [bad])
    wrong_type = httpclient.InferInput("x", [1, 3, 2], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 3, 2), np.float64))
    with pytest.raises(InferenceServerException, match="expects datatype FP32, got FP64"):
        client.infer("lstm_tiny", [wrong_type])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [wrong_type])


def test_repository_index_load_unload(private_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(private_server.http_addr)
    index = client.get_model_repository_index()
    assert {(m["name"], m["state"]) for m in index} >= {("add_sub", "READY"), ("lstm_tiny", "READY")}
    client.unload_model("lstm_tiny")
    assert not client.is_model_ready("lstm_tiny")
    states = {m["name"]: m for m in client.get_model_repository_index()}
    assert states["lstm_tiny"]["state"] == "UNAVAILABLE"
    inp = httpclient.InferInput("x", [1, 1, 2], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1, 2), np.float32))
    with pytest.raises(InferenceServerException, match="not ready"):
        client.infer("lstm_tiny", [inp])
    client.load_model("lstm_tiny")
    assert client.is_model_ready("lstm_tiny")
    client.infer("lstm_tiny", [inp])
    with pytest.raises(InferenceServerException, match="not in the repository"):
        client.load_model("missing_model")
