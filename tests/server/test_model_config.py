"""config.pbtxt parsing, auto-completion from the graph, version policies."""

from __future__ import annotations

import pytest

from server.core import pbtxt
from server.core.errors import InvalidArgument
from server.core.model_config import GraphIO, complete, parse_config_text, select_versions

TRITON_STYLE = """
name: "lstm"   # comment
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  { name: "x" data_type: TYPE_FP32 dims: [ -1, 2 ] }
]
output { name: "y", data_type: TYPE_FP32, dims: [-1, 4] }
version_policy: { specific: { versions: [1, 3] } }
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""
GRAPH_IN = [GraphIO("x", "FP32", [-1, -1, 2])]
GRAPH_OUT = [GraphIO("y", "FP32", [-1, -1, 4])]


def test_pbtxt_reads_triton_style() -> None:
    cfg = pbtxt.loads(TRITON_STYLE)
    assert cfg["max_batch_size"] == 16
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 2]}]
    assert cfg["output"][0]["dims"] == [-1, 4]
    assert cfg["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert cfg["parameters"] == {"intra_op_thread_count": {"string_value": "1"}}


def test_pbtxt_round_trips_through_dumps() -> None:
    cfg = pbtxt.loads(TRITON_STYLE)
    assert pbtxt.loads(pbtxt.dumps(cfg)) == cfg


@pytest.mark.parametrize("text", ["max_batch_size: ", "input [ { name: \"x\" ", "name: \"x\" }", "@@"])
def test_pbtxt_errors_are_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument):
        pbtxt.loads(text)


def test_json_config_same_as_pbtxt() -> None:
    js = parse_config_text('{"max_batch_size": 16, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 2]}]}',
                           json_form=True)
    assert js["input"] == pbtxt.loads(TRITON_STYLE)["input"]


def test_autocomplete_batching_from_dynamic_first_dim() -> None:
    cfg = complete("lstm", None, GRAPH_IN, GRAPH_OUT)
    assert cfg["max_batch_size"] == 4
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [], "max_queue_delay_microseconds": 0}
    assert "dynamic_batching" not in complete("lstm", {"max_batch_size": 2}, GRAPH_IN, GRAPH_OUT)
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 2]}]
    fixed = complete("m", None, [GraphIO("x", "FP32", [3, 2])], [GraphIO("y", "FP32", [3, 4])])
    assert fixed["max_batch_size"] == 0 and fixed["input"][0]["dims"] == [3, 2]
    assert "dynamic_batching" not in fixed


def test_config_checked_against_graph() -> None:
    with pytest.raises(InvalidArgument, match="not in the ONNX graph"):
        complete("m", {"input": [{"name": "q", "data_type": "TYPE_FP32", "dims": [2]}]}, GRAPH_IN, GRAPH_OUT)
    with pytest.raises(InvalidArgument, match="TYPE_INT32 but the ONNX graph has TYPE_FP32"):
        complete("m", {"input": [{"name": "x", "data_type": "TYPE_INT32"}]}, GRAPH_IN, GRAPH_OUT)
    with pytest.raises(InvalidArgument, match="variable first dimension"):
        complete("m", {"max_batch_size": 8}, [GraphIO("x", "FP32", [3, 2])], [GraphIO("y", "FP32", [3])])
    with pytest.raises(InvalidArgument, match="does not match model directory"):
        complete("m", {"name": "other"}, GRAPH_IN, GRAPH_OUT)


@pytest.mark.parametrize("policy, expected", [
    ({"latest": {"num_versions": 1}}, [5]),
    ({"latest": {"num_versions": 2}}, [5, 3]),
    ({"all": {}}, [5, 3, 1]),
    ({"specific": {"versions": [1, 3, 9]}}, [3, 1]),
])
def test_version_policy(policy: dict, expected: list[int]) -> None:
    assert select_versions(policy, [1, 3, 5]) == expected


def test_version_policy_served(tmp_path) -> None:
    import httpx

    from tests.support import ServerProcess, copy_repository

    repo = copy_repository(tmp_path / "repo", ["lstm_tiny"])
    import shutil

    for v in (2, 3):
        shutil.copytree(repo / "lstm_tiny" / "1", repo / "lstm_tiny" / str(v))
    (repo / "lstm_tiny" / "config.pbtxt").write_text("version_policy: { specific: { versions: [1, 3] } }\n")
    proc = ServerProcess(repo).start()
    try:
        meta = httpx.get(proc.url + "/v2/models/lstm_tiny").json()
        assert meta["versions"] == ["1", "3"]
        assert httpx.get(proc.url + "/v2/models/lstm_tiny/versions/2/ready").status_code == 400
        assert httpx.get(proc.url + "/v2/models/lstm_tiny/versions/3/ready").status_code == 200
    finally:
        proc.stop()
