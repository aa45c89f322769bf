"""config.pbtxt / config.json parsing (protobuf's text_format / json_format), auto-completion, version policies."""

from __future__ import annotations

import json
import re

import pytest
from google.protobuf import text_format

from server.core.errors import InvalidArgument
from server.core.model_config import GraphIO, complete, config_to_text, parse_config_text, select_versions
from server.grpc._generated import model_config_pb2 as mc

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


def test_triton_text_format_reads() -> None:
    cfg = parse_config_text(TRITON_STYLE, json_form=False)
    assert cfg["max_batch_size"] == 16
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 2]}]
    assert cfg["output"][0]["dims"] == [-1, 4]
    assert cfg["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100}
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert cfg["parameters"] == {"intra_op_thread_count": {"string_value": "1"}}


# Every message of proto/model_config.proto with fields set away from their defaults.
EVERY_FIELD = """
name: "m" platform: "onnxruntime_onnx" backend: "onnxruntime" max_batch_size: 8
version_policy { latest { num_versions: 2 } }
input { name: "x" data_type: TYPE_FP16 format: FORMAT_NCHW dims: [3, -1] reshape { shape: [3] }
        is_shape_tensor: true allow_ragged_batch: true optional: true }
output { name: "y" data_type: TYPE_INT64 dims: [2] label_filename: "labels.txt" reshape { shape: [1, 2] }
         is_shape_tensor: true }
instance_group { name: "g" count: 3 gpus: [0, 1] kind: KIND_GPU profile: ["p"] passive: true host_policy: "h" }
default_model_filename: "net.onnx"
cc_model_filenames { key: "8.6" value: "a.onnx" }
metric_tags { key: "team" value: "x" }
sequence_batching {
  oldest { max_candidate_sequences: 4 preferred_batch_size: [2] max_queue_delay_microseconds: 9
           preserve_ordering: true }
  max_sequence_idle_microseconds: 18446744073709551615
  control_input { name: "START" control { kind: CONTROL_SEQUENCE_READY int32_false_true: [0, 1]
                  fp32_false_true: [0, 1.5] bool_false_true: [false, true] data_type: TYPE_INT32 } }
  state { input_name: "h_in" output_name: "h_out" data_type: TYPE_FP32 dims: [-1, 8]
          initial_state { data_type: TYPE_FP32 dims: [8] zero_data: true name: "zeros" }
          use_same_buffer_for_input_output: true use_growable_memory: true }
  iterative_sequence: true
}
parameters { key: "intra_op_thread_count" value { string_value: "2" } }
model_transaction_policy { decoupled: true }
response_cache { enable: true }
"""


def test_round_trips_preserve_every_field() -> None:
    original = text_format.Parse(EVERY_FIELD, mc.ModelConfig())
    as_dict = parse_config_text(EVERY_FIELD, json_form=False)
    assert as_dict["sequence_batching"]["max_sequence_idle_microseconds"] == 2**64 - 1   # a number, not "..."
    assert as_dict["input"][0]["dims"] == [3, -1]
    # dict -> text -> dict, and dict -> JSON text -> dict: nothing lost, nothing changed.
    assert parse_config_text(config_to_text(as_dict), json_form=False) == as_dict
    assert parse_config_text(json.dumps(as_dict), json_form=True) == as_dict
    assert text_format.Parse(config_to_text(as_dict), mc.ModelConfig()) == original
    set_fields = {f"{m.DESCRIPTOR.name}.{f.name}" for m in _messages(original) for f, _ in m.ListFields()}
    declared = {f"{d.name}.{f.name}" for d in _descriptors(mc.ModelConfig.DESCRIPTOR) for f in d.fields}
    # Fields left out: the other arm of each oneof, and the map entries' own key/value.
    skipped = {"ModelConfig.dynamic_batching", "ModelVersionPolicy.all", "ModelVersionPolicy.specific",
               "ModelSequenceBatching.direct", "InitialState.data_file"}
    missing = {d for d in declared - set_fields - skipped if not d.endswith((".key", ".value"))}
    missing -= {d for d in missing if d.split(".")[0] in ("Specific", "StrategyDirect", "ModelDynamicBatching",
                                                          "ModelQueuePolicy", "PriorityQueuePolicyEntry", "All")}
    assert not missing, f"EVERY_FIELD does not set {sorted(missing)}"


def _messages(msg):  # type: ignore[no-untyped-def]
    yield msg
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        items = value.values() if field.message_type.GetOptions().map_entry else (
            value if field.is_repeated else [value])
        for item in items:
            if hasattr(item, "ListFields"):
                yield from _messages(item)


def _descriptors(desc):  # type: ignore[no-untyped-def]
    yield desc
    for f in desc.fields:
        if f.message_type is not None and not f.message_type.GetOptions().map_entry and f.message_type is not desc:
            yield from _descriptors(f.message_type)


@pytest.mark.parametrize("text, where, names", [
    ("max_batch_size: 8\nmax_batch_sise: 4\n", "config.pbtxt:2:1", "max_batch_sise"),
    ('input { name: "x" dims: [1] }\ninput { name: "y" dimz: [1] }', "config.pbtxt:2:", "dimz"),
    ('name: "m"\nmax_batch_size: "eight"', "config.pbtxt:2:", "max_batch_size"),
    ("max_batch_size: 2.5", "config.pbtxt:1:", "max_batch_size"),
    ('input { name: "x" data_type: TYPE_FLOAT32 }', "config.pbtxt:1:", "TYPE_FLOAT32"),
    ("max_batch_size: 4\nmax_batch_size: 8", "config.pbtxt:2:", "max_batch_size"),
    ('input [ { name: "x" ', "config.pbtxt:1:", ""),
    ("@@", "config.pbtxt:1:", ""),
])
def test_text_errors_name_field_file_and_line(text: str, where: str, names: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(where) + ".*" + re.escape(names)):
        parse_config_text(text, json_form=False, source="config.pbtxt")


@pytest.mark.parametrize("text, where, names", [
    ('{\n  "max_batch_size": 8,\n  "max_batch_sise": 4\n}', "config.json:3", "max_batch_sise"),
    ('{"input": [\n {"name": "x",\n  "dims": ["a"]}]}', "config.json:3", "dims"),
    ('{"max_batch_size": "eight"}', "config.json:1", "max_batch_size"),
    ('{"max_batch_size": 8,}', "config.json:1:", "JSON"),
    ("[1, 2]", "config.json", "object"),
])
def test_json_errors_name_field_file_and_line(text: str, where: str, names: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(where) + ".*" + re.escape(names)):
        parse_config_text(text, json_form=True, source="config.json")


def test_json_config_same_as_pbtxt() -> None:
    js = parse_config_text('{"max_batch_size": 16, "input": {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 2]}}',
                           json_form=True)
    assert js["input"] == parse_config_text(TRITON_STYLE, json_form=False)["input"]


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


def test_version_policy_served_and_bad_configs_refused(tmp_path) -> None:
    import shutil

    import httpx

    from tests.support import ServerProcess, copy_repository

    repo = copy_repository(tmp_path / "repo", ["lstm_tiny", "add_sub"])
    for v in (2, 3):
        shutil.copytree(repo / "lstm_tiny" / "1", repo / "lstm_tiny" / str(v))
    (repo / "lstm_tiny" / "config.pbtxt").write_text("version_policy: { specific: { versions: [1, 3] } }\n")
    (repo / "add_sub" / "config.pbtxt").write_text("max_batch_size: 8\nmax_batch_sise: 4\n")
    proc = ServerProcess(repo).start()
    try:
        meta = httpx.get(proc.url + "/v2/models/lstm_tiny").json()
        assert meta["versions"] == ["1", "3"]
        assert httpx.get(proc.url + "/v2/models/lstm_tiny/versions/2/ready").status_code == 400
        assert httpx.get(proc.url + "/v2/models/lstm_tiny/versions/3/ready").status_code == 200
        # A misspelled field stops that model (the others serve), and the reason says what and where.
        index = {m["name"]: m for m in httpx.post(proc.url + "/v2/repository/index").json()}
        assert index["add_sub"]["state"] == "UNAVAILABLE"
        assert "add_sub/config.pbtxt:2:1" in index["add_sub"]["reason"]
        assert '"max_batch_sise"' in index["add_sub"]["reason"]
        # Over the API: refused before anything is written, the stored config untouched.
        bad = httpx.post(proc.url + "/v2/repository/models/lstm_tiny/load",
                         json={"parameters": {"config": '{"max_batch_size": 2, "dynamic_batchng": {}}'}})
        assert bad.status_code == 400 and "dynamic_batchng" in bad.json()["error"]
        assert (repo / "lstm_tiny" / "config.pbtxt").read_text().startswith("version_policy")
        assert httpx.get(proc.url + "/v2/models/lstm_tiny").json()["versions"] == ["1", "3"]
    finally:
        proc.stop()
