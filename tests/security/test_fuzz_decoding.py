"""Property tests on the two wire decoders and everything behind them: REST's JSON + binary-extension parser
(server/rest/codec.py) and gRPC's ModelInferRequest conversion (server/grpc/converters.py), followed by the
core's checks and onnxruntime. Whatever the bytes, the only exception allowed out is a client error
(ModelBridgeError of a 4xx kind) — never a bare exception (500), never an internal error.

FUZZ_EXAMPLES raises the example count (`make fuzz`); the suite runs a bounded number.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.core.errors import ErrorKind, ModelBridgeError
from server.core.repository import ModelRepository
from server.core.service import InferenceService
from server.grpc import converters
from server.grpc._generated import grpc_service_pb2 as pb
from server.rest import codec
from tests.support import copy_repository

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MODELS = ["add_sub", "identity_types", "lstm_tiny", "lstm_stream"]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "BF16", "FP8", "int32", "", "STRING"]
NAMES = ["INPUT0", "INPUT1", "x", "IN_FP32", "IN_BYTES", "IN_BOOL", "IN_INT64", "IN_UINT8", "nope", ""]
CLIENT_KINDS = {ErrorKind.INVALID, ErrorKind.TOO_LARGE, ErrorKind.NOT_FOUND, ErrorKind.UNSUPPORTED,
                ErrorKind.PRECONDITION, ErrorKind.UNAVAILABLE, ErrorKind.EXHAUSTED, ErrorKind.DEADLINE}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceService]:
    repo = copy_repository(tmp_path_factory.mktemp("fuzz") / "repo", MODELS)
    svc = InferenceService(ModelRepository(Path(repo)))
    svc.start()
    yield svc


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def client_error_only(exc: BaseException) -> None:
    if not isinstance(exc, ModelBridgeError):
        raise AssertionError(f"unexpected {type(exc).__name__}: {exc}") from exc  # noqa: TRY004
    assert exc.kind in CLIENT_KINDS, f"{exc.kind} ({exc.message}) would be a server error"
    assert exc.message


# -- values ------------------------------------------------------------------------------------------
dims = st.one_of(st.integers(0, 4), st.integers(-3, -1), st.sampled_from([2**31, 2**40, 2**63 - 1, 2**64]))
shapes = st.one_of(st.lists(dims, max_size=4), st.lists(st.just(1), min_size=30, max_size=70), st.just("3"), st.none(), st.lists(st.text(max_size=2), max_size=2))
scalars = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.text(max_size=4),
                    st.none())
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=20)
parameters = st.one_of(st.none(), st.dictionaries(
    st.sampled_from(["binary_data_size", "binary_data", "binary_data_output", "timeout", "sequence_id",
                     "sequence_start", "sequence_end", "classification", "x"]),
    st.one_of(st.integers(-5, 2**40), st.booleans(), st.text(max_size=3), st.none(), st.floats()), max_size=3),
    st.lists(st.integers(), max_size=2))


@st.composite
def json_requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    inputs = draw(st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(NAMES), "datatype": st.sampled_from(DATATYPES), "shape": shapes},
        optional={"data": nested, "parameters": parameters}), max_size=3))
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(st.fixed_dictionaries({"name": st.sampled_from(NAMES + ["y", "OUTPUT0"])},
                                                             optional={"parameters": parameters}), max_size=2))
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters)
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.text(max_size=5), st.integers()))
    header = json.dumps(doc).encode()   # stdlib: writes ints past 64 bits and NaN, which orjson refuses
    tail = draw(st.binary(max_size=64))
    how = draw(st.sampled_from(["json", "exact", "wrong", "junk"]))
    if how == "json":
        return header, None
    if how == "exact":
        return header + tail, str(len(header))
    if how == "wrong":
        return header + tail, str(draw(st.integers(-2, len(header) + len(tail) + 3)))
    return header + tail, draw(st.text(max_size=6))


def binary_elements(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def run_rest(service: InferenceService, loop: asyncio.AbstractEventLoop, model: str, body: bytes,
             header: str | None) -> None:
    try:
        mv = service.model_version(model)
        req, pref, binary_all = codec.decode_request(body, header, model, "", mv)
        resp = loop.run_until_complete(service.infer(req))
        codec.encode_response(resp, pref, binary_all)
    except Exception as exc:  # noqa: BLE001 - the property: only client errors escape
        client_error_only(exc)


@FUZZ
@given(model=st.sampled_from(MODELS), request=json_requests())
def test_rest_json_and_binary_requests(service: InferenceService, loop: asyncio.AbstractEventLoop,
                                       model: str, request: tuple[bytes, str | None]) -> None:
    run_rest(service, loop, model, *request)


@FUZZ
@given(model=st.sampled_from(MODELS), body=st.binary(max_size=256),
       header=st.one_of(st.none(), st.just("0"), st.integers(0, 300).map(str), st.text(max_size=4)))
def test_rest_arbitrary_bytes(service: InferenceService, loop: asyncio.AbstractEventLoop, model: str,
                              body: bytes, header: str | None) -> None:
    run_rest(service, loop, model, body, header)


@FUZZ
@given(shape=st.lists(st.integers(0, 3), max_size=3),
       values=st.lists(st.binary(max_size=6), max_size=8), cut=st.integers(-3, 3))
def test_rest_bytes_lengths(service: InferenceService, loop: asyncio.AbstractEventLoop, shape: list[int],
                            values: list[bytes], cut: int) -> None:
    """BYTES elements whose 4-byte length prefixes disagree with the data or the shape."""
    raw = binary_elements(values)
    raw = raw[:cut] if cut < 0 else raw + b"\x00" * cut
    header = orjson.dumps({"inputs": [{"name": "IN_BYTES", "datatype": "BYTES", "shape": shape,
                                       "parameters": {"binary_data_size": len(raw)}}]})
    run_rest(service, loop, "identity_types", header + raw, str(len(header)))


# -- gRPC --------------------------------------------------------------------------------------------
@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=draw(st.sampled_from(MODELS)), id=draw(st.text(max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        t = msg.inputs.add(name=draw(st.sampled_from(NAMES)), datatype=draw(st.sampled_from(DATATYPES)))
        t.shape.extend(draw(st.one_of(st.lists(st.integers(-3, 2**62), max_size=4), st.lists(st.integers(0, 4), max_size=3),
                                      st.lists(st.just(1), min_size=30, max_size=70))))
        field = draw(st.sampled_from(["none", "bool_contents", "int_contents", "int64_contents", "uint_contents",
                                      "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"]))
        n = draw(st.integers(0, 12))
        if field == "bool_contents":
            t.contents.bool_contents.extend([True] * n)
        elif field in ("int_contents",):
            t.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n)))
        elif field in ("int64_contents",):
            t.contents.int64_contents.extend([-(2**63)] * n)
        elif field in ("uint_contents",):
            t.contents.uint_contents.extend([2**32 - 1] * n)
        elif field in ("uint64_contents",):
            t.contents.uint64_contents.extend([2**64 - 1] * n)
        elif field == "fp32_contents":
            t.contents.fp32_contents.extend([float("nan")] * n)
        elif field == "fp64_contents":
            t.contents.fp64_contents.extend([1e308] * n)
        elif field == "bytes_contents":
            t.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=4), min_size=n, max_size=n)))
        if draw(st.booleans()):
            t.parameters["binary_data_size"].int64_param = draw(st.integers(-3, 100))
    if draw(st.booleans()):
        msg.raw_input_contents.extend(draw(st.lists(st.binary(max_size=96), max_size=4)))
    for key in draw(st.lists(st.sampled_from(["timeout", "sequence_id", "sequence_start", "priority"]), max_size=2)):
        p = msg.parameters[key]
        choice = draw(st.sampled_from(["int64_param", "bool_param", "string_param", "uint64_param", "double_param"]))
        value = {"int64_param": draw(st.integers(-(2**63), 2**63 - 1)), "bool_param": True, "string_param": "x",
                 "uint64_param": 2**64 - 1, "double_param": 0.5}[choice]
        setattr(p, choice, value)
    for name in draw(st.lists(st.sampled_from(NAMES + ["y"]), max_size=2)):
        msg.outputs.add(name=name)
    return msg


def run_grpc(service: InferenceService, loop: asyncio.AbstractEventLoop, msg: pb.ModelInferRequest) -> None:
    try:
        req = converters.infer_request_from_proto(msg)
        resp = loop.run_until_complete(service.infer(req))
        converters.infer_response_to_proto(resp)
    except Exception as exc:  # noqa: BLE001 - the property: only client errors escape
        client_error_only(exc)


@FUZZ
@given(msg=grpc_requests())
def test_grpc_infer_requests(service: InferenceService, loop: asyncio.AbstractEventLoop,
                             msg: pb.ModelInferRequest) -> None:
    run_grpc(service, loop, msg)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_grpc_arbitrary_wire_bytes(service: InferenceService, loop: asyncio.AbstractEventLoop, raw: bytes) -> None:
    msg = pb.ModelInferRequest()
    try:
        msg.ParseFromString(raw)
    except Exception:  # noqa: BLE001 - grpc's deserializer refuses it before our code runs
        return
    run_grpc(service, loop, msg)
