"""Our protos against the descriptors in the tritonclient wheel (built from Triton's own .proto files):
every message, field, enum value and rpc we declare must exist there with the same number and type.
That is what wire compatibility with tritonclient and perf_analyzer rests on."""

from __future__ import annotations

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: F401  (fills Triton's pool)

from server.grpc._generated import POOL
from server.grpc._generated import grpc_service_pb2 as ours
from server.grpc._generated import model_config_pb2 as ours_config

TRITON = descriptor_pool.Default()


def _type_name(f: FieldDescriptor) -> str:
    if f.message_type is not None:
        return f.message_type.full_name
    if f.enum_type is not None:
        return f.enum_type.full_name
    return str(f.type)


def _check_enum(enum: EnumDescriptor, problems: list[str]) -> None:
    theirs = TRITON.FindEnumTypeByName(enum.full_name)
    for v in enum.values:
        if theirs.values_by_name.get(v.name) is None or theirs.values_by_name[v.name].number != v.number:
            problems.append(f"{enum.full_name}.{v.name} = {v.number}")


def _check_message(msg: Descriptor, problems: list[str]) -> None:
    try:
        theirs = TRITON.FindMessageTypeByName(msg.full_name)
    except KeyError:
        problems.append(f"{msg.full_name}: not a Triton message")
        return
    for f in msg.fields:
        t = theirs.fields_by_number.get(f.number)
        where = f"{msg.full_name}.{f.name} = {f.number}"
        if t is None:
            problems.append(f"{where}: Triton has no field {f.number}")
            continue
        if (t.name, t.type, t.is_repeated, _type_name(t)) != (f.name, f.type, f.is_repeated, _type_name(f)):
            problems.append(f"{where}: Triton has {t.name} type {t.type} {_type_name(t)} repeated={t.is_repeated}")
        oneof = f.containing_oneof.name if f.containing_oneof else None
        if oneof != (t.containing_oneof.name if t.containing_oneof else None):
            problems.append(f"{where}: oneof differs")
    for nested in msg.nested_types:
        _check_message(nested, problems)
    for enum in msg.enum_types:
        _check_enum(enum, problems)


def test_our_descriptors_live_in_a_private_pool() -> None:
    # The reason both stub sets can be imported in one process (this test does).
    assert ours.DESCRIPTOR.pool is POOL and POOL is not TRITON


def test_every_message_and_field_matches_triton() -> None:
    problems: list[str] = []
    for file in (ours_config.DESCRIPTOR, ours.DESCRIPTOR):
        assert file.package == "inference"
        for msg in file.message_types_by_name.values():
            _check_message(msg, problems)
        for enum in file.enum_types_by_name.values():
            _check_enum(enum, problems)
    assert not problems, "\n".join(problems)
    assert len(ours.DESCRIPTOR.message_types_by_name) >= 30


def test_every_rpc_matches_triton() -> None:
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = TRITON.FindServiceByName("inference.GRPCInferenceService")
    assert service.full_name == "inference.GRPCInferenceService"
    names = [m.name for m in service.methods]
    assert names == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
        "RepositoryModelUnload",
    ]
    for m in service.methods:
        t = theirs.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (t.input_type.full_name, t.output_type.full_name)
        assert (m.client_streaming, m.server_streaming) == (t.client_streaming, t.server_streaming), m.name


def test_a_full_request_decodes_identically_in_both() -> None:
    """Bytes from Triton's message parse into ours with nothing unknown left over, and back."""
    req = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="i")
    req.parameters["priority"].uint64_param = 3
    req.parameters["ratio"].double_param = 0.5
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    t.parameters["binary_data_size"].int64_param = 8
    t.contents.fp32_contents.extend([1.0, 2.0])
    req.outputs.add(name="y").parameters["classification"].int64_param = 2
    req.raw_input_contents.append(b"\x00" * 8)
    wire = req.SerializeToString(deterministic=True)
    mine = ours.ModelInferRequest.FromString(wire)
    assert mine.SerializeToString(deterministic=True) == wire
    assert mine.parameters["ratio"].double_param == 0.5 and list(mine.inputs[0].shape) == [1, 2]
