"""The same request over REST and over gRPC gets the same answer, for every model in the example
repository (both transports against one server process)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.grpc.samples import inputs_for
from tests.support import EXAMPLES, ServerProcess

MODELS = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())


def test_the_example_repository_is_covered() -> None:
    assert {"add_sub", "identity_types", "lstm_tiny"} <= set(MODELS)


def _requests(meta: dict, config: dict) -> list[tuple[dict, dict]]:
    """(inputs, sequence kwargs) per request: two independent requests, or the steps of one sequence
    for a stateful model (sequence_batching in its config)."""
    if "sequence_batching" not in config:
        return [(inputs_for(meta, seed), {}) for seed in range(2)]
    steps = 3
    return [(inputs_for(meta, seed), {"sequence_start": seed == 0, "sequence_end": seed == steps - 1})
            for seed in range(steps)]


def _compare(h_res: httpclient.InferResult, g_res: grpcclient.InferResult, meta: dict) -> None:
    h_resp, g_resp = h_res.get_response(), g_res.get_response()
    assert (g_resp.model_name, g_resp.model_version, g_resp.id) == (
        h_resp["model_name"], h_resp["model_version"], h_resp["id"])
    h_outs = {o["name"]: o for o in h_resp["outputs"]}
    g_outs = {o.name: o for o in g_resp.outputs}
    assert list(g_outs) == list(h_outs) == [o["name"] for o in meta["outputs"]]
    for name, h_out in h_outs.items():
        assert g_outs[name].datatype == h_out["datatype"]
        assert list(g_outs[name].shape) == h_out["shape"]
        h_arr, g_arr = h_res.as_numpy(name), g_res.as_numpy(name)
        assert g_arr.dtype == h_arr.dtype, name
        if h_arr.dtype == object:
            assert list(g_arr.reshape(-1)) == list(h_arr.reshape(-1)), name
        else:
            # Bit-for-bit: the same core computes both; NaN payloads included.
            assert g_arr.tobytes() == h_arr.tobytes(), name


@pytest.mark.parametrize("model", MODELS)
def test_rest_and_grpc_agree(server: ServerProcess, model: str) -> None:
    http = httpclient.InferenceServerClient(server.http_addr)
    grpc = grpcclient.InferenceServerClient(server.grpc_addr)
    meta = http.get_model_metadata(model)
    config = http.get_model_config(model)
    assert grpc.get_model_metadata(model, as_json=True)["name"] == meta["name"]
    for step, (data, sequence) in enumerate(_requests(meta, config)):
        h_inputs, g_inputs = [], []
        for name, (datatype, arr) in data.items():
            h = httpclient.InferInput(name, list(arr.shape), datatype)
            h.set_data_from_numpy(arr)
            g = grpcclient.InferInput(name, list(arr.shape), datatype)
            g.set_data_from_numpy(arr)
            h_inputs.append(h)
            g_inputs.append(g)
        # A stateful model gets one sequence per transport: equal inputs, equal state, equal answers.
        h_seq = {"sequence_id": 7001, **sequence} if sequence else {}
        g_seq = {"sequence_id": 7002, **sequence} if sequence else {}
        h_res = http.infer(model, h_inputs, request_id=f"parity-{step}", **h_seq)
        g_res = grpc.infer(model, g_inputs, request_id=f"parity-{step}", **g_seq)
        _compare(h_res, g_res, meta)
    http.close()
    grpc.close()


def test_errors_agree(server: ServerProcess) -> None:
    """A wrong shape fails on both transports with the same message."""
    http = httpclient.InferenceServerClient(server.http_addr)
    grpc = grpcclient.InferenceServerClient(server.grpc_addr)
    x = np.zeros((1, 3, 5), np.float32)
    h, g = httpclient.InferInput("x", [1, 3, 5], "FP32"), grpcclient.InferInput("x", [1, 3, 5], "FP32")
    h.set_data_from_numpy(x)
    g.set_data_from_numpy(x)
    with pytest.raises(httpclient.InferenceServerException) as h_err:
        http.infer("lstm_tiny", [h])
    with pytest.raises(grpcclient.InferenceServerException) as g_err:
        grpc.infer("lstm_tiny", [g])
    assert g_err.value.message() == h_err.value.message()
    assert g_err.value.status() == "StatusCode.INVALID_ARGUMENT" and h_err.value.status() == "400"
