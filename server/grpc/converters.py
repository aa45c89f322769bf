"""Translation between the gRPC messages and the core's types; no decisions live here.

Inference tensors are converted by hand (the hot path); the metadata-like answers already have
Triton's JSON shape in the core, so protobuf's json_format maps them field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from server.core import datatypes, tensors
from server.core.errors import InternalError, InvalidArgument
from server.core.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from server.grpc._generated import grpc_service_pb2 as pb
from server.grpc._generated import model_config_pb2 as mc

# Which repeated field of InferTensorContents carries each datatype; FP16 has none (raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# -- parameters ---------------------------------------------------------------------------------
def parameters_from_proto(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in params.items():
        choice = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, choice) if choice else None
    return out


def parameters_to_proto(values: Mapping[str, Any], target: Any) -> None:
    """Fill a protobuf map<string, InferParameter> from plain Python values."""
    for key, v in values.items():
        p = target[key]
        if isinstance(v, bool):
            p.bool_param = v
        elif isinstance(v, int):
            if v < 2**63:
                p.int64_param = v
            else:
                p.uint64_param = v
        elif isinstance(v, float):
            p.double_param = v
        else:
            p.string_param = str(v)


# -- inference ----------------------------------------------------------------------------------
def infer_request_from_proto(msg: pb.ModelInferRequest) -> InferRequest:
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; "
            "give one entry per input, in input order"
        )
    inputs: list[InputTensor] = []
    for i, t in enumerate(msg.inputs):
        dt = datatypes.from_v2(t.datatype)
        shape = tensors.check_shape(t.name, list(t.shape))
        has_contents = t.HasField("contents")
        if raw:
            if has_contents:
                raise InvalidArgument(
                    f"input '{t.name}': data given both in contents and raw_input_contents; use one"
                )
            data = tensors.from_binary(t.name, dt, shape, raw[i])
        elif has_contents:
            data = array_from_contents(t.name, dt, shape, t.contents)
        else:
            raise InvalidArgument(f"input '{t.name}' has no data: fill raw_input_contents or contents")
        inputs.append(InputTensor(t.name, dt.v2, shape, data, parameters_from_proto(t.parameters)))
    outputs = [RequestedOutput(o.name, parameters_from_proto(o.parameters)) for o in msg.outputs]
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        outputs=outputs or None,
        parameters=parameters_from_proto(msg.parameters),
    )


def array_from_contents(
    name: str, dt: datatypes.DataType, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    field = CONTENTS_FIELD.get(dt.v2)
    if field is None:
        raise InvalidArgument(f"input '{name}': {dt.v2} has no typed contents field; send it in raw_input_contents")
    values = getattr(contents, field)
    count = tensors.element_count(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} needs {count} values in contents.{field}, got {len(values)}"
        )
    if dt.v2 == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    if dt.numpy.kind in "iu" and count:
        # int_contents / uint_contents are 32-bit on the wire; narrower types must fit.
        info = np.iinfo(dt.numpy)
        lo, hi = min(values), max(values)
        if lo < info.min or hi > info.max:
            raise InvalidArgument(f"input '{name}': value out of range for {dt.v2} ({info.min}..{info.max})")
    return np.asarray(values, dtype=dt.numpy).reshape(shape)


def infer_response_to_proto(resp: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    for out in resp.outputs:
        t = msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        parameters_to_proto(out.parameters, t.parameters)
        msg.raw_output_contents.append(tensors.to_binary(datatypes.from_v2(out.datatype), out.data))
    parameters_to_proto(resp.parameters, msg.parameters)
    return msg


# -- metadata-like answers (Triton's JSON shape in the core) -------------------------------------
def from_json(value: Mapping[str, Any], message: Message, what: str) -> Message:
    try:
        return json_format.ParseDict(value, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InternalError(f"{what} cannot be expressed in protobuf: {exc}") from None


def server_metadata_to_proto(meta: Mapping[str, Any]) -> pb.ServerMetadataResponse:
    return from_json(meta, pb.ServerMetadataResponse(), "server metadata")  # type: ignore[return-value]


def model_metadata_to_proto(meta: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    return from_json(meta, pb.ModelMetadataResponse(), "model metadata")  # type: ignore[return-value]


def model_config_to_proto(config: Mapping[str, Any]) -> pb.ModelConfigResponse:
    cfg = from_json(config, mc.ModelConfig(), f"the config of model '{config.get('name', '')}'")
    return pb.ModelConfigResponse(config=cfg)


def statistics_to_proto(stats: Mapping[str, Any]) -> pb.ModelStatisticsResponse:
    return from_json(stats, pb.ModelStatisticsResponse(), "model statistics")  # type: ignore[return-value]


def repository_index_to_proto(models: list[dict[str, Any]]) -> pb.RepositoryIndexResponse:
    return from_json({"models": models}, pb.RepositoryIndexResponse(), "repository index")  # type: ignore[return-value]


# -- repository -----------------------------------------------------------------------------------
def load_parameters_from_proto(
    params: Mapping[str, pb.ModelRepositoryParameter],
) -> tuple[str | None, dict[str, bytes]]:
    """Triton's load parameters: "config" (JSON text) and "file:<version>/<name>" (bytes)."""
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, p in params.items():
        choice = p.WhichOneof("parameter_choice")
        if key == "config":
            if choice != "string_param":
                raise InvalidArgument("load parameter 'config' must be a string_param holding the JSON config")
            config = p.string_param
        elif key.startswith("file:"):
            if choice != "bytes_param":
                raise InvalidArgument(f"load parameter '{key[:140]}' must be a bytes_param holding the file")
            files[key[len("file:"):]] = p.bytes_param
        else:
            raise InvalidArgument(
                f"unknown load parameter '{key[:140]}'; expected 'config' or 'file:<version>/<name>'"
            )
    return config, files
