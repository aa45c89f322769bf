"""tritonclient.grpc against the real server: health, metadata, config, index, statistics."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as triton_config

from tests.support import EXAMPLES, ServerProcess

MODELS = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())


def test_server_live_ready_and_metadata(client: grpcclient.InferenceServerClient, server: ServerProcess) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    rest = httpx.get(server.url + "/v2").json()
    assert meta["name"] == rest["name"] == "modelbridge"
    assert meta["version"] == rest["version"]
    # perf_analyzer refuses servers that do not announce statistics.
    assert meta["extensions"] == rest["extensions"] and "statistics" in meta["extensions"]


def test_model_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_matches_rest(client: grpcclient.InferenceServerClient, server: ServerProcess, model: str) -> None:
    grpc_meta = client.get_model_metadata(model, as_json=True)
    rest_meta = httpx.get(f"{server.url}/v2/models/{model}").json()
    assert grpc_meta["name"] == rest_meta["name"] == model
    assert grpc_meta["platform"] == rest_meta["platform"] == "onnxruntime_onnx"
    assert grpc_meta["versions"] == rest_meta["versions"]
    for kind in ("inputs", "outputs"):
        # json_format renders int64 as strings; the values must be the same numbers.
        got = [{**t, "shape": [int(d) for d in t.get("shape", [])]} for t in grpc_meta[kind]]
        assert got == rest_meta[kind]


@pytest.mark.parametrize("model", MODELS)
def test_model_config_matches_rest(client: grpcclient.InferenceServerClient, server: ServerProcess, model: str) -> None:
    """The gRPC config, decoded with Triton's own ModelConfig message, equals the REST JSON config."""
    got = client.get_model_config(model).config
    rest = httpx.get(f"{server.url}/v2/models/{model}/config").json()
    # Triton's ModelConfig holds one scheduler; the core never reports two.
    assert not ("sequence_batching" in rest and "dynamic_batching" in rest)
    expected = json_format.ParseDict(rest, triton_config.ModelConfig(), ignore_unknown_fields=True)
    assert got == expected
    assert got.name == model and got.platform == "onnxruntime_onnx" and got.backend == "onnxruntime"
    assert got.max_batch_size == rest["max_batch_size"]
    assert [i.name for i in got.input] == [i["name"] for i in rest["input"]]
    assert got.model_transaction_policy.decoupled is False


def test_model_metadata_of_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as err:
        client.get_model_metadata("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in err.value.message()
    with pytest.raises(grpcclient.InferenceServerException) as err:
        client.get_model_config("add_sub", "9")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_repository_index(client: grpcclient.InferenceServerClient, server: ServerProcess) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    rest = httpx.post(server.url + "/v2/repository/index", json={}).json()
    assert [(m["name"], m.get("version", ""), m["state"]) for m in index] == [
        (m["name"], m.get("version", ""), m["state"]) for m in rest
    ]
    assert {m["name"] for m in index} == set(MODELS)
    assert all(m["state"] == "READY" for m in client.get_model_repository_index(as_json=True)["models"])


def test_inference_statistics_count_grpc_requests(client: grpcclient.InferenceServerClient) -> None:
    def stats() -> dict:
        return client.get_inference_statistics("add_sub", "1", as_json=True)["model_stats"][0]

    before = stats()
    x = np.ones((3, 16), np.int32)
    inputs = [grpcclient.InferInput(n, [3, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(x)
    client.infer("add_sub", inputs)
    after = stats()
    assert after["name"] == "add_sub" and after["version"] == "1"
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 3   # batch of 3
    assert int(after["execution_count"]) == int(before.get("execution_count", 0)) + 1
    success = after["inference_stats"]["success"]
    assert int(success["count"]) == int(before["inference_stats"].get("success", {}).get("count", 0)) + 1
    assert int(success["ns"]) > 0
    assert int(after["last_inference"]) > 0
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} >= set(MODELS)


def test_statistics_of_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as err:
        client.get_inference_statistics("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"
