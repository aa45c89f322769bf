"""Each class of bad request the issue names, by hand, over the real REST fast path and gRPC: a 4xx /
INVALID_ARGUMENT naming the problem, within seconds, and the server still answers afterwards."""

from __future__ import annotations

import struct

import grpc
import httpx
import numpy as np
import orjson
import pytest

from server.grpc._generated import grpc_service_pb2 as pb
from server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.support import ServerProcess


def _add_sub(shape: object = (1, 16), datatype: str = "INT32", data: object = None) -> dict:
    data = [1] * 16 if data is None else data
    return {"inputs": [{"name": n, "shape": shape, "datatype": datatype, "data": data} for n in ("INPUT0", "INPUT1")]}


def _binary(header: dict, payload: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + payload, {"Inference-Header-Content-Length": str(len(head))}


def _bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


BYTES_INPUT = {"inputs": [{"name": "IN_BYTES", "shape": [1, 2], "datatype": "BYTES",
                           "parameters": {"binary_data_size": 0}}]}


def _bytes_case(raw: bytes) -> tuple[bytes, dict[str, str]]:
    doc = orjson.loads(orjson.dumps(BYTES_INPUT))
    doc["inputs"][0]["parameters"]["binary_data_size"] = len(raw)
    return _binary(doc, raw)


ZEROS = np.zeros(16, np.int32).tobytes()
BIN2 = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}
                   for n in ("INPUT0", "INPUT1")]}

# (case, model, body, headers, status, words in the message)
CASES = [
    ("malformed JSON", "add_sub", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("JSON that is not an object", "add_sub", b"[]", {}, 400, "JSON object"),
    ("header length past the body", "add_sub", b"{}", {"Inference-Header-Content-Length": "99"}, 400,
     "exceeds the body length"),
    ("header length not a number", "add_sub", b"{}", {"Inference-Header-Content-Length": "12abc"}, 400,
     "non-negative integer"),
    ("header length in other digits", "add_sub", b"{}", {"Inference-Header-Content-Length": "\u00b2".encode("latin-1")}, 400,
     "non-negative integer"),
    ("header length cutting the JSON", "add_sub", *_binary(BIN2, ZEROS + ZEROS)[:1],
     {"Inference-Header-Content-Length": "10"}, 400, "malformed JSON"),
    ("binary shorter than the shape", "add_sub", *_binary(BIN2, ZEROS + ZEROS[:-4]), 400, "runs past the end"),
    ("binary longer than claimed", "add_sub", *_binary(BIN2, ZEROS + ZEROS + b"xx"), 400, "unclaimed"),
    ("binary size vs shape", "add_sub",
     *_binary({"inputs": [{**BIN2["inputs"][0], "parameters": {"binary_data_size": 60}}, BIN2["inputs"][1]]},
              ZEROS[:60] + ZEROS), 400, "needs 64 bytes"),
    ("negative dimension", "add_sub", orjson.dumps(_add_sub(shape=[1, -16])), {}, 400, "negative dimension"),
    ("element-count overflow", "add_sub", orjson.dumps(_add_sub(shape=[2**40, 2**40])), {}, 400, "over the limit"),
    ("overflow behind a zero", "add_sub", orjson.dumps(_add_sub(shape=[0, 2**40, 2**40], data=[])), {}, 400,
     "over the limit"),
    ("rank bomb", "add_sub", orjson.dumps(_add_sub(shape=[1] * 70, data=[1])), {}, 400, "dimensions"),
    ("shape not a list", "add_sub", orjson.dumps(_add_sub(shape="1,16")), {}, 400, "list of integers"),
    ("BYTES length past the data", "identity_types", *_bytes_case(_bytes_elements(b"ab") + b"\x09\0\0\0xy"), 400,
     "declares 9 bytes"),
    ("BYTES cut inside a prefix", "identity_types", *_bytes_case(_bytes_elements(b"ab") + b"\x01\0"), 400,
     "length prefix"),
    ("BYTES count vs shape", "identity_types", *_bytes_case(_bytes_elements(b"a", b"b", b"c")), 400,
     "needs 2 BYTES elements"),
    ("unknown datatype", "add_sub", orjson.dumps(_add_sub(datatype="INT33")), {}, 400, "unknown datatype"),
    ("ragged nested data", "add_sub", orjson.dumps(_add_sub(shape=[2, 2], data=[[1, 2], [3]])), {}, 400, "ragged"),
    ("strings in numbers", "add_sub", orjson.dumps(_add_sub(data=["1"] * 16)), {}, 400, "numbers"),
    ("integer past 64 bits", "add_sub", (b'{"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", '
                                         b'"data": [123456789012345678901234567890]}]}'), {}, 400,
     "not a valid INT32"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rest_bad_request(server: ServerProcess, case: tuple) -> None:
    _, model, body, headers, status, words = case
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.text


@pytest.mark.parametrize("version", ["1" * 5000, "\u0661", "\u00b2", "-1", "1.0"])
def test_hostile_versions_in_paths(server: ServerProcess, version: str) -> None:
    for suffix in ("", "/config", "/infer"):
        r = httpx.request("POST" if suffix == "/infer" else "GET",
                          f"{server.url}/v2/models/add_sub/versions/{version}{suffix}",
                          content=orjson.dumps(_add_sub()), timeout=10)
        assert r.status_code in (400, 404), (version[:10], suffix, r.status_code, r.text[:200])


def _grpc_add_sub(shape: list[int], datatype: str = "INT32", raw: bytes | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="add_sub")
    for n in ("INPUT0", "INPUT1"):
        req.inputs.add(name=n, datatype=datatype, shape=shape)
        req.raw_input_contents.append(ZEROS if raw is None else raw)
    return req


@pytest.mark.parametrize("req, words", [
    (_grpc_add_sub([1, -16]), "negative dimension"),
    (_grpc_add_sub([2**40, 2**40]), "over the limit"),
    (_grpc_add_sub([0, 2**40, 2**40], raw=b""), "over the limit"),
    (_grpc_add_sub([1, 16], datatype="INT33"), "unknown datatype"),
    (_grpc_add_sub([1, 16], raw=ZEROS[:-1]), "needs 64 bytes"),
    (_grpc_add_sub([1] * 70, raw=b"\0" * 4), "dimensions"),
], ids=["negative", "overflow", "zero-overflow", "datatype", "raw size", "rank"])
def test_grpc_bad_request(server: ServerProcess, req: pb.ModelInferRequest, words: str) -> None:
    with grpc.insecure_channel(server.grpc_addr) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details(), err.value.details()


def test_server_still_answers(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v2/models/add_sub/infer", json=_add_sub(), timeout=10)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2] * 16
