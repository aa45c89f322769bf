"""Inputs in typed `contents` (which tritonclient never sends), driven through Triton's own stubs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc

from tests.grpc.samples import random_tensor
from tests.support import ServerProcess, copy_repository

# datatype -> (ONNX element type, InferTensorContents field)
TYPED = {
    "BOOL": (TensorProto.BOOL, "bool_contents"),
    "UINT8": (TensorProto.UINT8, "uint_contents"),
    "UINT16": (TensorProto.UINT16, "uint_contents"),
    "UINT32": (TensorProto.UINT32, "uint_contents"),
    "UINT64": (TensorProto.UINT64, "uint64_contents"),
    "INT8": (TensorProto.INT8, "int_contents"),
    "INT16": (TensorProto.INT16, "int_contents"),
    "INT32": (TensorProto.INT32, "int_contents"),
    "INT64": (TensorProto.INT64, "int64_contents"),
    "FP32": (TensorProto.FLOAT, "fp32_contents"),
    "FP64": (TensorProto.DOUBLE, "fp64_contents"),
    "BYTES": (TensorProto.STRING, "bytes_contents"),
}


def typed_identity_model() -> bytes:
    """One Identity per datatype that has a typed contents field (FP16 has none)."""
    nodes, inputs, outputs = [], [], []
    for dt, (elem, _) in TYPED.items():
        inputs.append(helper.make_tensor_value_info(f"IN_{dt}", elem, ["n", 3]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{dt}", elem, ["n", 3]))
        nodes.append(helper.make_node("Identity", [f"IN_{dt}"], [f"OUT_{dt}"]))
    graph = helper.make_graph(nodes, "typed_identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tpb_grpc.GRPCInferenceServiceStub]:
    repo = copy_repository(tmp_path_factory.mktemp("typed") / "repo", models=["add_sub"])
    version = Path(repo / "typed_identity" / "1")
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(typed_identity_model())
    proc = ServerProcess(repo).start()
    channel = grpc.insecure_channel(proc.grpc_addr)
    yield tpb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    proc.stop()


def decode(response: tpb.ModelInferResponse, index: int) -> np.ndarray:
    out = response.outputs[index]
    raw = response.raw_output_contents[index]
    if out.datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            n = int.from_bytes(raw[pos : pos + 4], "little")
            items.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(list(out.shape))
    dtype = {"BOOL": np.bool_, "FP32": np.float32, "FP64": np.float64}.get(out.datatype) or np.dtype(out.datatype.lower())
    return np.frombuffer(raw, dtype=dtype).reshape(list(out.shape))


def test_every_typed_field_is_read_and_answered_raw(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    rng = np.random.default_rng(11)
    data = {dt: random_tensor(dt, [2, 3], rng) for dt in TYPED}
    request = tpb.ModelInferRequest(model_name="typed_identity", id="typed-1")
    request.parameters["ratio"].double_param = 0.25   # tritonclient's encoding of a float parameter
    request.parameters["priority"].uint64_param = 2
    for dt, arr in data.items():
        t = request.inputs.add(name=f"IN_{dt}", datatype=dt, shape=arr.shape)
        getattr(t.contents, TYPED[dt][1]).extend(arr.reshape(-1).tolist())
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "typed-1"
    assert len(response.raw_output_contents) == len(response.outputs) == len(TYPED)
    for i, out in enumerate(response.outputs):
        dt = out.name.removeprefix("OUT_")
        assert out.datatype == dt
        assert not out.HasField("contents")   # answers are always raw
        got = decode(response, i)
        if dt == "BYTES":
            assert list(got.reshape(-1)) == list(data[dt].reshape(-1))
        else:
            np.testing.assert_array_equal(got, data[dt], err_msg=dt)


def add_sub_request() -> tpb.ModelInferRequest:
    request = tpb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        t = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        t.contents.int_contents.extend(range(16))
    return request


def expect_invalid(stub: tpb_grpc.GRPCInferenceServiceStub, request: tpb.ModelInferRequest, match: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in err.value.details(), err.value.details()


def test_typed_add_sub(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(add_sub_request(), timeout=30)
    got = np.frombuffer(response.raw_output_contents[0], np.int32)
    np.testing.assert_array_equal(got, 2 * np.arange(16))


def test_typed_count_must_match_shape(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    request = add_sub_request()
    del request.inputs[1].contents.int_contents[-1]
    expect_invalid(stub, request, "input 'INPUT1': shape [1, 16] needs 16 values in contents.int_contents, got 15")


def test_typed_values_must_fit_the_datatype(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    request = tpb.ModelInferRequest(model_name="typed_identity")
    for dt in TYPED:
        t = request.inputs.add(name=f"IN_{dt}", datatype=dt, shape=[1, 3])
        field = getattr(t.contents, TYPED[dt][1])
        field.extend([b"a", b"b", b"c"] if dt == "BYTES" else [True, False, True] if dt == "BOOL" else [1, 2, 3])
    request.inputs[5].contents.int_contents[0] = 300   # IN_INT8
    expect_invalid(stub, request, "input 'IN_INT8': value out of range for INT8")


def test_fp16_has_no_typed_field(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    request = add_sub_request()
    request.inputs[0].datatype = "FP16"
    expect_invalid(stub, request, "input 'INPUT0': FP16 has no typed contents field")


def test_raw_and_typed_cannot_be_mixed(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    request = add_sub_request()
    request.raw_input_contents.extend([np.arange(16, dtype=np.int32).tobytes()] * 2)
    expect_invalid(stub, request, "input 'INPUT0': data given both in contents and raw_input_contents")


def test_raw_entries_must_match_inputs(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    request = tpb.ModelInferRequest(model_name="add_sub")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    request.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(np.zeros(16, np.int32).tobytes())
    expect_invalid(stub, request, "raw_input_contents has 1 entries for 2 inputs")


def test_input_without_data(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    request = tpb.ModelInferRequest(model_name="add_sub")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    expect_invalid(stub, request, "input 'INPUT0' has no data")


def test_negative_dimension(stub: tpb_grpc.GRPCInferenceServiceStub) -> None:
    request = add_sub_request()
    request.inputs[0].shape[:] = [-1, 16]
    expect_invalid(stub, request, "input 'INPUT0': shape [-1, 16] has a negative dimension")
