"""config.pbtxt / config.json parsing (protobuf's text_format / json_format), auto-completion, version policies."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from server.core.errors import InvalidArgument
from server.core.model_config import (
    GraphIO,
    complete,
    config_to_text,
    not_acted_on,
    parse_config_text,
    select_versions,
)
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


def _filled(message: Message, arm: int, depth: int = 0) -> Message:
    """`message` with every field set away from its default; of each oneof, arm number `arm` (mod its size)."""
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[arm % len(oneof.fields)] is not field:
            continue
        kind = field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            container = getattr(message, field.name)
            key, value_field = _scalar(kind.fields_by_name["key"]), kind.fields_by_name["value"]
            if value_field.message_type is not None:
                _filled(container[key], arm, depth + 1)
            else:
                container[key] = _scalar(value_field)
        elif kind is not None:
            if depth > 8:
                continue
            sub = getattr(message, field.name).add() if field.is_repeated else getattr(message, field.name)
            _filled(sub, arm, depth + 1)
            sub.SetInParent()   # an empty message (e.g. version_policy all {}) is present all the same
        elif field.is_repeated:
            getattr(message, field.name).extend([_scalar(field), _scalar(field)])
        else:
            setattr(message, field.name, _scalar(field))
    return message


def _scalar(field: FieldDescriptor) -> Any:
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    return {FieldDescriptor.CPPTYPE_STRING: "s", FieldDescriptor.CPPTYPE_BOOL: True,
            FieldDescriptor.CPPTYPE_FLOAT: 1.5, FieldDescriptor.CPPTYPE_DOUBLE: 1.5,
            FieldDescriptor.CPPTYPE_INT32: -7, FieldDescriptor.CPPTYPE_INT64: -(2**63),
            FieldDescriptor.CPPTYPE_UINT32: 2**32 - 1, FieldDescriptor.CPPTYPE_UINT64: 2**64 - 1}[field.cpp_type]


@pytest.mark.parametrize("arm", [0, 1, 2])
def test_round_trips_preserve_every_field(arm: int) -> None:
    """Every field of Triton's ModelConfig (each oneof arm in one of the three runs): file text -> the
    server's dict -> config.pbtxt text / config.json text -> the same message, nothing lost or changed."""
    original = _filled(mc.ModelConfig(), arm)
    as_dict = parse_config_text(text_format.MessageToString(original), json_form=False)
    assert parse_config_text(config_to_text(as_dict), json_form=False) == as_dict
    assert parse_config_text(json.dumps(as_dict), json_form=True) == as_dict
    assert text_format.Parse(config_to_text(as_dict), mc.ModelConfig()) == original
    assert as_dict["max_batch_size"] == -7 and as_dict["input"][0]["dims"] == [-(2**63), -(2**63)]  # numbers


# A Triton config as people write them for ONNX models, with sections this server does not act on.
REAL_WORLD = """
name: "bert"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ 512 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 112 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 2, 4, 8 ] max_queue_delay_microseconds: 100000 }
optimization { graph { level: 1 } execution_accelerators {
  cpu_execution_accelerator : [ { name : "openvino" } ] } }
model_warmup [ { name: "sample" batch_size: 1 inputs { key: "input_ids" value: {
  data_type: TYPE_INT64 dims: [ 512 ] zero_data: true } } } ]
"""


def test_real_world_triton_config_is_accepted_whole() -> None:
    cfg = parse_config_text(REAL_WORLD, json_form=False)
    assert cfg["optimization"]["graph"] == {"level": 1}
    assert cfg["model_warmup"][0]["inputs"]["input_ids"]["dims"] == [512]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 100000
    assert not_acted_on(cfg) == ["model_warmup", "optimization"]


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
    import tritonclient.grpc as grpcclient

    from tests.support import ServerProcess, copy_repository

    repo = copy_repository(tmp_path / "repo", ["lstm_tiny", "add_sub"])
    for v in (2, 3):
        shutil.copytree(repo / "lstm_tiny" / "1", repo / "lstm_tiny" / str(v))
    (repo / "lstm_tiny" / "config.pbtxt").write_text("version_policy: { specific: { versions: [1, 3] } }\n"
                                                     "optimization { graph { level: 1 } }\n")
    (repo / "add_sub" / "config.pbtxt").write_text("max_batch_size: 8\nmax_batch_sise: 4\n")
    proc = ServerProcess(repo).start()
    try:
        meta = httpx.get(proc.url + "/v2/models/lstm_tiny").json()
        assert meta["versions"] == ["1", "3"]
        assert httpx.get(proc.url + "/v2/models/lstm_tiny/versions/2/ready").status_code == 400
        assert httpx.get(proc.url + "/v2/models/lstm_tiny/versions/3/ready").status_code == 200
        # Valid Triton this server does not act on: loaded, echoed back over REST and gRPC, named in the log.
        assert httpx.get(proc.url + "/v2/models/lstm_tiny/config").json()["optimization"] == {"graph": {"level": 1}}
        with grpcclient.InferenceServerClient(proc.grpc_addr) as client:
            assert client.get_model_config("lstm_tiny").config.optimization.graph.level == 1
        assert "does not act on: optimization" in proc.log()
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
