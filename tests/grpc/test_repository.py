"""Repository rpcs (load, unload, upload by load parameters) on a server of this module's own."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.grpc.test_infer import add_sub_inputs, expect_error, make_input
from tests.support import EXAMPLES, ServerProcess, copy_repository


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(copy_repository(tmp_path_factory.mktemp("repo-rpc") / "repo", models=["add_sub", "lstm_tiny"]))
    yield proc.start()
    proc.stop()


@pytest.fixture
def client(own: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(own.grpc_addr)
    yield c
    c.close()


def test_unload_then_load(client: grpcclient.InferenceServerClient) -> None:
    x = make_input("x", "FP32", np.zeros((1, 2, 2), np.float32))
    client.unload_model("lstm_tiny")
    assert not client.is_model_ready("lstm_tiny")
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["lstm_tiny"]["state"] == "UNAVAILABLE"
    with expect_error("UNAVAILABLE", "not ready"):
        client.infer("lstm_tiny", [x])
    client.load_model("lstm_tiny")
    assert client.is_model_ready("lstm_tiny")
    assert client.infer("lstm_tiny", [x]).as_numpy("y").shape == (1, 2, 4)


def test_ready_only_index(client: grpcclient.InferenceServerClient, own: ServerProcess) -> None:
    client.unload_model("lstm_tiny")
    try:
        everything = client.get_model_repository_index(as_json=True)
        assert {m["name"] for m in everything["models"]} == {"add_sub", "lstm_tiny"}
        # tritonclient never sets `ready`; Triton's own message does.
        with grpc.insecure_channel(own.grpc_addr) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            only_ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=30)
        assert [(m.name, m.version, m.state) for m in only_ready.models] == [("add_sub", "1", "READY")]
    finally:
        client.load_model("lstm_tiny")


def test_load_with_config_and_files_publishes_a_new_model(client: grpcclient.InferenceServerClient) -> None:
    onnx_bytes = (EXAMPLES / "add_sub" / "1" / "model.onnx").read_bytes()
    config = json.dumps({"name": "uploaded", "max_batch_size": 2})
    client.load_model("uploaded", config=config, files={"file:3/model.onnx": onnx_bytes})
    assert client.is_model_ready("uploaded", "3")
    assert client.get_model_config("uploaded").config.max_batch_size == 2
    a = np.ones((2, 16), np.int32)
    res = client.infer("uploaded", add_sub_inputs(a, a))
    assert res.get_response().model_version == "3"
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + a)
    with expect_error("INVALID_ARGUMENT", "batch size 3"):
        client.infer("uploaded", add_sub_inputs(np.ones((3, 16), np.int32), np.ones((3, 16), np.int32)))


def test_load_errors(client: grpcclient.InferenceServerClient) -> None:
    with expect_error("NOT_FOUND", "not in the repository"):
        client.load_model("missing_model")
    with expect_error("INVALID_ARGUMENT", "not an ONNX model"):
        client.load_model("broken", config="{}", files={"file:1/model.onnx": b"not onnx"})
    with expect_error("INVALID_ARGUMENT", "invalid model name"):
        client.load_model("../escape")
    with expect_error("INVALID_ARGUMENT", "not valid JSON"):
        client.load_model("add_sub", config="{nope")
    with expect_error("NOT_FOUND", "unknown model"):
        client.unload_model("never_heard_of")
    assert client.is_model_ready("add_sub")


def test_load_parameter_types_are_checked(own: ServerProcess) -> None:
    with grpc.insecure_channel(own.grpc_addr) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.RepositoryModelLoadRequest(model_name="add_sub")
        request.parameters["config"].bytes_param = b"{}"
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'config' must be a string_param" in err.value.details()
        request = service_pb2.RepositoryModelLoadRequest(model_name="add_sub")
        request.parameters["colour"].string_param = "blue"
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(request, timeout=30)
        assert "unknown load parameter 'colour'" in err.value.details()
        request = service_pb2.RepositoryModelLoadRequest(model_name="add_sub", repository_name="other")
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown repository 'other'" in err.value.details()
