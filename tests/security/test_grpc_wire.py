"""Arbitrary bytes as the request message of every rpc, over a real channel: protobuf may refuse them, our
code may refuse what they parse to; either way the status is a client error, never UNKNOWN or INTERNAL."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.grpc._generated import grpc_service_pb2 as pb
from tests.support import ServerProcess, copy_repository

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
METHODS = sorted(pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name)
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    # Administration stays refused (no key, no opt-out): random bytes that parse to an unload cannot act.
    proc = ServerProcess(copy_repository(tmp_path_factory.mktemp("wire") / "repo", ["add_sub"]),
                         allow_unauthenticated_admin=False).start()
    with grpc.insecure_channel(proc.grpc_addr) as ch:
        yield ch
    assert proc.proc is not None and proc.proc.poll() is None
    proc.stop()
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize("method", METHODS)
def test_arbitrary_request_bytes(channel: grpc.Channel, method: str) -> None:
    path = f"/inference.GRPCInferenceService/{method}"
    streaming = method == "ModelStreamInfer"

    @given(raw=st.one_of(st.binary(max_size=200), st.just(b"\xff\xff\xff\x0f"), st.just(b"\x0a\x05add_sub")))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(raw: bytes) -> None:
        try:
            if streaming:
                for _ in channel.stream_stream(path)(iter([raw, raw]), timeout=30):
                    pass
            else:
                channel.unary_unary(path)(raw, timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() not in SERVER_FAULTS, (method, raw, exc.code(), exc.details())

    check()
