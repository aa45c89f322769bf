"""start_grpc_server in-process on the real core: health follows readiness, reflection, binding."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from server.core.errors import Unavailable
from server.core.repository import ModelRepository
from server.core.service import InferenceService
from server.grpc.server import start_grpc_server
from tests.support import ServerProcess, copy_repository, free_port


def _service(tmp_path: Path) -> InferenceService:
    service = InferenceService(ModelRepository(copy_repository(tmp_path / "repo", models=["add_sub"])))
    service.start()
    return service


def test_health_follows_readiness(tmp_path: Path) -> None:
    service = _service(tmp_path)

    async def scenario() -> list[int]:
        port = free_port()
        server = await start_grpc_server(service, host="127.0.0.1", port=port, max_message_bytes=1 << 20)
        seen = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for ready in (True, False, True):
                    service.ready = ready
                    for name in ("", "inference.GRPCInferenceService"):
                        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                        seen.append(reply.status)
        finally:
            await server.stop(None)
        return seen

    S, N = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert asyncio.run(scenario()) == [S, S, N, N, S, S]


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    service = _service(tmp_path)

    async def scenario() -> str:
        port = free_port()
        first = await start_grpc_server(service, host="127.0.0.1", port=port, max_message_bytes=1 << 20)
        try:
            with pytest.raises(Unavailable) as err:
                await start_grpc_server(service, host="127.0.0.1", port=port, max_message_bytes=1 << 20)
            return err.value.message
        finally:
            await first.stop(None)

    assert "cannot listen on 127.0.0.1:" in asyncio.run(scenario())


def test_health_and_reflection_on_the_real_process(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        db = ProtoReflectionDescriptorDatabase(channel)
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(db.get_services())
        pool = DescriptorPool(db)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert "ModelStreamInfer" in service.methods_by_name
        assert pool.FindMessageTypeByName("inference.ModelConfig").fields_by_name["max_batch_size"].number == 4
        assert pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Check"]


@pytest.mark.parametrize("flag", ["--grpc-max-message-bytes", "--max-body-bytes"])
def test_message_limit_is_enforced(tmp_path: Path, flag: str) -> None:
    """Set directly, or inherited from the HTTP body limit when not given."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    proc = ServerProcess(copy_repository(tmp_path / "repo", models=["lstm_tiny"]), extra_args=[flag, "65536"]).start()
    try:
        client = grpcclient.InferenceServerClient(proc.grpc_addr)
        small = grpcclient.InferInput("x", [1, 100, 2], "FP32")
        small.set_data_from_numpy(np.zeros((1, 100, 2), np.float32))
        client.infer("lstm_tiny", [small])
        big = grpcclient.InferInput("x", [1, 10_000, 2], "FP32")   # 80 kB of data
        big.set_data_from_numpy(np.zeros((1, 10_000, 2), np.float32))
        with pytest.raises(grpcclient.InferenceServerException) as err:
            client.infer("lstm_tiny", [big])
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        client.close()
    finally:
        proc.stop()


def test_sigint_stops_grpc_cleanly_even_with_an_open_stream(tmp_path: Path) -> None:
    import queue
    import signal
    import time

    import numpy as np
    import tritonclient.grpc as grpcclient

    # An idle stream holds shutdown for the grace period (then it is cancelled): keep that short.
    proc = ServerProcess(copy_repository(tmp_path / "repo", models=["add_sub"]),
                         extra_args=["--shutdown-grace-secs", "2"]).start()
    client = grpcclient.InferenceServerClient(proc.grpc_addr)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        a = np.ones((1, 16), np.int32)
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a)
        client.async_stream_infer("add_sub", inputs)
        result, error = results.get(timeout=30)
        assert error is None and result.as_numpy("OUTPUT0")[0, 0] == 2
        started = time.monotonic()
        assert proc.stop(signal.SIGINT, timeout=30) == 0, proc.log()
        assert time.monotonic() - started < 15
        with pytest.raises(grpcclient.InferenceServerException) as err:
            grpcclient.InferenceServerClient(proc.grpc_addr).is_server_live()
        assert err.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
        proc.stop()
