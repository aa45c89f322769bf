"""Raw HTTP against the real server: JSON forms, the binary extension by hand, model exchange, errors."""

from __future__ import annotations

import base64
import struct

import httpx
import numpy as np
import onnx
import orjson
import pytest

from tests.support import EXAMPLES, ServerProcess, scale_model


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def infer_json(http: httpx.Client, model: str, body: dict, version: str = "") -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return http.post(path, content=orjson.dumps(body))


def add_sub_body(data0: list, data1: list, shape: list[int]) -> dict:
    return {"inputs": [
        {"name": "INPUT0", "shape": shape, "datatype": "INT32", "data": data0},
        {"name": "INPUT1", "shape": shape, "datatype": "INT32", "data": data1},
    ]}


def test_flat_and_nested_json_give_the_same_answer(http: httpx.Client) -> None:
    flat = list(range(16))
    nested = [list(range(16))]
    r1 = infer_json(http, "add_sub", add_sub_body(flat, [1] * 16, [1, 16]))
    r2 = infer_json(http, "add_sub", add_sub_body(nested, [[1] * 16], [1, 16]))
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["content-type"] == "application/json"
    assert r1.json()["outputs"] == r2.json()["outputs"]
    out = {o["name"]: o for o in r1.json()["outputs"]}
    assert out["OUTPUT0"]["data"] == [i + 1 for i in range(16)]
    assert out["OUTPUT1"]["shape"] == [1, 16]


def test_request_id_echoed_and_version_path(http: httpx.Client) -> None:
    body = add_sub_body([0] * 16, [0] * 16, [1, 16]) | {"id": "abc"}
    r = infer_json(http, "add_sub", body, version="1")
    assert r.status_code == 200
    assert r.json()["id"] == "abc" and r.json()["model_version"] == "1"


def test_binary_inputs_and_outputs_by_hand(http: httpx.Client) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    header = orjson.dumps({
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}},
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}, {"name": "OUTPUT1"}],
    })
    r = http.post("/v2/models/add_sub/infer", content=header + a.tobytes() + b.tobytes(),
                  headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    doc = orjson.loads(r.content[:n])
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["OUTPUT0"]["parameters"]["binary_data_size"] == 64
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], np.int32), (a + b).reshape(-1))
    assert outs["OUTPUT1"]["data"] == (a - b).reshape(-1).tolist()


def test_binary_data_output_for_all(http: httpx.Client) -> None:
    body = add_sub_body([2] * 16, [1] * 16, [1, 16]) | {"parameters": {"binary_data_output": True}}
    r = infer_json(http, "add_sub", body)
    n = int(r.headers["inference-header-content-length"])
    assert len(r.content) == n + 128
    assert r.headers["content-type"] == "application/octet-stream"


def test_raw_single_input_body(http: httpx.Client) -> None:
    x = np.linspace(-1, 1, 6, dtype=np.float32)
    r = http.post("/v2/models/lstm_tiny/infer", content=x.tobytes(),
                  headers={"Inference-Header-Content-Length": "0"})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    assert orjson.loads(r.content[:n])["outputs"][0]["shape"] == [1, 3, 4]
    assert len(r.content) == n + 12 * 4
    r = http.post("/v2/models/add_sub/infer", content=b"\0" * 64, headers={"Inference-Header-Content-Length": "0"})
    assert r.status_code == 400 and "single-input" in r.json()["error"]


def test_bytes_json_and_binary(http: httpx.Client) -> None:
    words = ["a", "", "ünï"]
    raw = b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words)
    inputs = [{"name": f"IN_{t}", "shape": [1, 1], "datatype": t, "data": [0 if t != "BOOL" else False]}
              for t in ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                        "FP16", "FP32", "FP64")]
    header = orjson.dumps({"inputs": inputs + [
        {"name": "IN_BYTES", "shape": [1, 3], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "OUT_BYTES"}]})
    r = http.post("/v2/models/identity_types/infer", content=header + raw,
                  headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == words


def test_download_is_byte_exact_with_etag(http: httpx.Client) -> None:
    r = http.get("/v2/models/lstm_tiny/versions/1/model.onnx")
    assert r.status_code == 200
    assert r.content == (EXAMPLES / "lstm_tiny" / "1" / "model.onnx").read_bytes()
    etag = r.headers["etag"]
    assert http.get("/v2/models/lstm_tiny/model.onnx").headers["etag"] == etag
    assert http.get("/v2/models/lstm_tiny/versions/1/model.onnx", headers={"If-None-Match": etag}).status_code == 304
    assert http.get("/v2/models/lstm_tiny/versions/9/model.onnx").status_code == 404


def _scale(http: httpx.Client, model: str, version: str = "") -> list[float]:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    r = infer_json(http, model, body, version)
    assert r.status_code == 200, r.text
    return r.json()["outputs"][0]["data"]


def test_upload_new_model_and_versions(private_server: ServerProcess) -> None:
    with httpx.Client(base_url=private_server.url, timeout=30) as http:
        r = http.put("/v2/repository/models/scaler/versions/1", content=scale_model(2.0).SerializeToString())
        assert r.status_code == 201, r.text
        assert _scale(http, "scaler") == [2, 4, 6]
        r = http.put("/v2/repository/models/scaler/versions/2", content=scale_model(3.0).SerializeToString())
        assert r.json()["served"] is True
        assert _scale(http, "scaler") == [3, 6, 9]
        # latest-1 policy: version 1 is stored but no longer served
        assert http.get("/v2/models/scaler/versions/1/ready").status_code == 400
        assert http.get("/v2/models/scaler/versions/2/model.onnx").content == scale_model(3.0).SerializeToString()
        assert (private_server.repository / "scaler" / "2" / "model.onnx").read_bytes() == scale_model(3.0).SerializeToString()
        # bad uploads are refused and change nothing
        for bad in (b"", b"not an onnx model", scale_model(4.0).SerializeToString()[:-7]):
            r = http.put("/v2/repository/models/scaler/versions/3", content=bad)
            assert r.status_code == 400, r.text
        assert not (private_server.repository / "scaler" / "3").exists()
        assert _scale(http, "scaler") == [3, 6, 9]
        for name, version in (("..", "1"), ("a%2Fb", "1"), ("scaler", "0"), ("scaler", "x1"), ("scaler", "-2")):
            r = http.put(f"/v2/repository/models/{name}/versions/{version}", content=scale_model(1.0).SerializeToString())
            assert r.status_code in (400, 404), (name, version, r.status_code)
        assert sorted(p.name for p in private_server.repository.iterdir()) == sorted(
            [p.name for p in EXAMPLES.iterdir() if p.is_dir()] + ["scaler", ".staging"]
        ) or ".staging" not in [p.name for p in private_server.repository.iterdir()]


def test_triton_load_with_files_and_config(private_server: ServerProcess) -> None:
    with httpx.Client(base_url=private_server.url, timeout=30) as http:
        params = {
            "config": orjson.dumps({"max_batch_size": 2}).decode(),
            "file:5/model.onnx": base64.b64encode(scale_model(5.0).SerializeToString()).decode(),
        }
        r = http.post("/v2/repository/models/fivefold/load", content=orjson.dumps({"parameters": params}))
        assert r.status_code == 200, r.text
        assert _scale(http, "fivefold", "5") == [5, 10, 15]
        assert http.get("/v2/models/fivefold/config").json()["max_batch_size"] == 2
        body = {"inputs": [{"name": "x", "shape": [3, 3], "datatype": "FP32", "data": [0] * 9}]}
        r = infer_json(http, "fivefold", body)
        assert r.status_code == 400 and "batch size 3" in r.json()["error"]
        r = http.post("/v2/repository/models/fivefold/load",
                      content=orjson.dumps({"parameters": {"file:6/model.onnx": "!!not base64!!"}}))
        assert r.status_code == 400 and "base64" in r.json()["error"]
        r = http.post("/v2/repository/models/fivefold/load",
                      content=orjson.dumps({"parameters": {"file:../x/model.onnx": "AAAA"}}))
        assert r.status_code == 400


ERRORS = [
    # (description, model, body bytes, headers, status, fragment of the message)
    ("malformed json", "add_sub", b"{not json", {}, 400, "malformed JSON"),
    ("not an object", "add_sub", b"[1,2]", {}, 400, "JSON object"),
    ("no inputs", "add_sub", b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    ("unknown datatype", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[1,1,2],"datatype":"FP8","data":[1,2]}]}', {}, 400, "unknown datatype 'FP8'"),
    ("negative shape", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[1,-1,2],"datatype":"FP32","data":[1,2]}]}', {}, 400, "negative dimension"),
    ("huge shape", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[100000,100000,2],"datatype":"FP32","data":[1,2]}]}', {}, 400, "over the limit"),
    ("element count", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[1,2,3]}]}', {}, 400, "needs 4 elements, data holds 3"),
    ("ragged", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[[1,2],[3]]}]}', {}, 400, "ragged"),
    ("strings as numbers", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[1,1,2],"datatype":"FP32","data":["a","b"]}]}', {}, 400, "input 'x'"),
    ("wrong input name", "lstm_tiny",
     b'{"inputs":[{"name":"z","shape":[1,1,2],"datatype":"FP32","data":[1,2]}]}', {}, 400, "unexpected input 'z'"),
    ("missing input", "add_sub",
     b'{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]}',
     {}, 400, "INPUT1"),
    ("unknown output", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[1,1,2],"datatype":"FP32","data":[1,2]}],"outputs":[{"name":"q"}]}', {}, 400,
     "unknown output 'q'"),
    ("header length not a number", "lstm_tiny", b"{}", {"Inference-Header-Content-Length": "abc"}, 400, "non-negative integer"),
    ("header length past body", "lstm_tiny", b"{}", {"Inference-Header-Content-Length": "99"}, 400, "exceeds the body"),
    ("binary size mismatch", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[1,1,2],"datatype":"FP32","parameters":{"binary_data_size":4}}]}' + b"\0" * 4,
     {"Inference-Header-Content-Length": "95"}, 400, "needs 8 bytes, got 4"),
    ("bf16", "lstm_tiny",
     b'{"inputs":[{"name":"x","shape":[1,1,2],"datatype":"BF16","data":[1,2]}]}', {}, 501, "BF16"),
    ("unknown model", "nope", b'{"inputs":[]}', {}, 404, "unknown model 'nope'"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_bad_requests_get_clear_errors(http: httpx.Client, case: tuple) -> None:
    _, model, body, headers, status, fragment = case
    r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_unknown_version_and_routes(http: httpx.Client) -> None:
    r = http.get("/v2/models/lstm_tiny/versions/3")
    assert r.status_code == 404 and "version 3" in r.json()["error"]
    assert http.get("/v2/models/lstm_tiny/versions/abc").status_code == 400
    assert http.get("/v2/nothing/here").status_code == 404
    assert "error" in http.get("/v2/nothing/here").json()


def test_body_limit(tmp_path) -> None:
    from tests.support import copy_repository

    proc = ServerProcess(copy_repository(tmp_path / "repo", ["lstm_tiny"]), ["--max-body-bytes", "1000"]).start()
    try:
        big = b'{"inputs":[{"name":"x","shape":[1,1,2],"datatype":"FP32","data":[1,2]}], "pad": "' + b"x" * 2000 + b'"}'
        r = httpx.post(proc.url + "/v2/models/lstm_tiny/infer", content=big)
        assert r.status_code == 413 and "limit of 1000 bytes" in r.json()["error"]
        r = httpx.put(proc.url + "/v2/repository/models/m/versions/1", content=b"\0" * 5000)
        assert r.status_code == 413
    finally:
        proc.stop()


def test_failing_model_does_not_stop_the_others(tmp_path) -> None:
    from tests.support import copy_repository

    repo = copy_repository(tmp_path / "repo", ["lstm_tiny"])
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    proc = ServerProcess(repo).start()
    try:
        index = {m["name"]: m for m in httpx.post(proc.url + "/v2/repository/index").json()}
        assert index["lstm_tiny"]["state"] == "READY"
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "failed to load" in index["broken"]["reason"]
        r = httpx.get(proc.url + "/v2/models/broken")
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        ready = httpx.post(proc.url + "/v2/repository/index", content=b'{"ready": true}').json()
        assert [m["name"] for m in ready] == ["lstm_tiny"]
    finally:
        proc.stop()


def test_gates_endpoint_splits_the_fused_lstm(http: httpx.Client) -> None:
    from onnx import numpy_helper

    model = onnx.load(str(EXAMPLES / "lstm_tiny" / "1" / "model.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    hidden = 4
    doc = http.get("/v2/models/lstm_tiny/versions/1/gates").json()
    node = doc["nodes"][0]
    assert node["op"] == "LSTM" and node["hidden_size"] == hidden and node["input_size"] == 2
    gates = node["directions"][0]["gates"]
    for k, letter in enumerate("iofc"):  # ONNX gate order in W, R and B
        np.testing.assert_array_equal(np.array(gates[letter]["W"], np.float32),
                                      weights["W"][0, k * hidden:(k + 1) * hidden])
        np.testing.assert_array_equal(np.array(gates[letter]["Rb"], np.float32),
                                      weights["B"][0, 4 * hidden + k * hidden:4 * hidden + (k + 1) * hidden])
    assert http.get("/v2/models/add_sub/gates").json()["nodes"] == []
    assert http.get("/v2/models/nope/gates").status_code == 404


def test_asgi_infer_route_answers_like_the_http_server(http: httpx.Client) -> None:
    """create_app's own /infer route (ASGI hosting, /openapi.json) wraps the same handler as the port."""
    import asyncio

    from server.core.repository import ModelRepository
    from server.core.service import InferenceService
    from server.rest.app import create_app

    service = InferenceService(ModelRepository(EXAMPLES))
    service.start(load=["add_sub"])
    body = orjson.dumps(add_sub_body(list(range(16)), [1] * 16, [1, 16]))
    bad = b'{"inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"INT32","data":[1,2,3]}]}'

    async def call(content: bytes) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://asgi") as client:
            return await client.post("/v2/models/add_sub/infer", content=content)

    for content in (body, bad):
        via_asgi = asyncio.run(call(content))
        via_port = http.post("/v2/models/add_sub/infer", content=content)
        assert via_asgi.status_code == via_port.status_code
        assert via_asgi.json() == via_port.json()


def test_header_length_trims_only_http_whitespace() -> None:
    """'0\\x1f' once passed the digit check (str.strip() dropped the \\x1f) and then broke int(): a ValueError,
    not a 400 (found by make fuzz). Spaces and tabs around the number are HTTP's own and stay allowed."""
    from server.core.errors import InvalidArgument
    from server.rest import codec

    with pytest.raises(InvalidArgument, match="non-negative integer"):
        codec._parse_header_length("0\x1f", 0)
    assert codec._parse_header_length(" 3\t", 5) == 3
