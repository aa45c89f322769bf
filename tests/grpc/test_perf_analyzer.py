"""Triton's perf_analyzer (from the tritonclient wheel) runs against the server over gRPC and HTTP
with no failed request. Short windows: this proves compatibility, it does not measure speed."""

from __future__ import annotations

import re
import subprocess

import pytest
import tritonclient.http as httpclient

from tests.support import ROOT, ServerProcess

SCRIPT = ROOT / "scripts" / "perf_analyzer.sh"
QUICK = ["--measurement-interval", "500", "-p", "500", "-s", "1000", "--max-trials", "3"]
ALL_TYPES = [f"--shape=IN_{d}:3" for d in ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                           "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES")]

CASES = {
    "add_sub-grpc": ("add_sub", "grpc", ["--concurrency-range", "2"]),
    "add_sub-http": ("add_sub", "http", ["--concurrency-range", "2"]),
    # A stateful model: perf_analyzer runs sequences (sequence_id/start/end), here over one stream.
    "lstm_stream-grpc-streaming": ("lstm_stream", "grpc", ["--shape", "x:1,2", "--streaming", "--concurrency-range",
                                                           "2", "--sequence-length", "20"]),
    "lstm_stream-grpc": ("lstm_stream", "grpc", ["--shape", "x:1,2", "--sequence-length", "10"]),
    "lstm_stream-http": ("lstm_stream", "http", ["--shape", "x:1,2", "--sequence-length", "10"]),
    # Random data, BOOL included: any nonzero byte is true, as in Triton.
    "identity_types-grpc": ("identity_types", "grpc", [*ALL_TYPES, "-b", "2"]),
}


def successes(server: ServerProcess, model: str) -> tuple[int, int]:
    stats = httpclient.InferenceServerClient(server.http_addr).get_inference_statistics(model)["model_stats"][0]
    return stats["inference_stats"]["success"]["count"], stats["inference_stats"]["fail"]["count"]


@pytest.mark.parametrize("case", list(CASES))
def test_perf_analyzer_reports_no_errors(server: ServerProcess, case: str) -> None:
    model, protocol, extra = CASES[case]
    url = server.grpc_addr if protocol == "grpc" else server.http_addr
    ok_before, failed_before = successes(server, model)
    run = subprocess.run([str(SCRIPT), "-m", model, "-i", protocol, "-u", url, *QUICK, *extra],
                         capture_output=True, text=True, timeout=120, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "error" not in output.lower(), output
    client_count = int(re.search(r"Successful request count: (\d+)", output).group(1))
    ok_after, failed_after = successes(server, model)
    assert client_count > 0
    assert ok_after - ok_before >= client_count   # the server saw (at least) what perf_analyzer counted
    assert failed_after == failed_before
