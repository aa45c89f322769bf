"""V2 REST bodies <-> core types: JSON tensors and the binary tensor data extension.

The body is parsed from raw bytes (tritonclient sends no Content-Type).
"""

from __future__ import annotations

from typing import Any

import orjson

from server.core import datatypes, tensors
from server.core.errors import InvalidArgument
from server.core.models import ModelVersion
from server.core.types import InferRequest, InferResponse, InputTensor, RequestedOutput

HEADER = "inference-header-content-length"


def _parse_header_length(value: str | None, body_len: int) -> int | None:
    if value is None:
        return None
    # Only HTTP's optional whitespace is trimmed: str.strip() also drops '\x1f' and the like, which int()
    # then refuses. isascii: str.isdigit() accepts '²' and other digits int() refuses; 19 digits: no 4300+.
    text = value.strip(" \t")
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise InvalidArgument(f"Inference-Header-Content-Length must be a non-negative integer, got {value[:40]!r}")
    n = int(text)
    if n > body_len:
        raise InvalidArgument(f"Inference-Header-Content-Length {n} exceeds the body length {body_len}")
    return n


def json_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    """Parse a JSON body that must be an object; anything else is the client's error, said so."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON in {what}: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return doc


def decode_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str, raw_model: ModelVersion | None = None
) -> tuple[InferRequest, dict[str, bool], bool]:
    """Return the request, per-output binary preference, and the request-wide binary_data_output flag.

    `raw_model` is needed only for the raw single-input form (Inference-Header-Content-Length: 0).
    """
    n = _parse_header_length(header_length, len(body))
    if n == 0:
        if raw_model is None:
            raise InvalidArgument("a raw binary body needs a model")
        return _raw_single_input(body, model_name, model_version, raw_model), {}, True
    header = body if n is None else body[:n]
    binary = memoryview(body)[n:] if n is not None else memoryview(b"")
    doc = json_object(header, "inference request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("inference request needs a non-empty 'inputs' list")
    params = _params(doc.get("parameters"), "request")
    req_id = doc.get("id", "")
    if not isinstance(req_id, str):
        raise InvalidArgument("request 'id' must be a string")
    offset = 0
    inputs: list[InputTensor] = []
    for item in raw_inputs:
        if not isinstance(item, dict):
            raise InvalidArgument("each input must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("each input needs a 'name' string")
        dtname = item.get("datatype")
        if not isinstance(dtname, str):
            raise InvalidArgument(f"input '{name}' needs a 'datatype' string")
        dt = datatypes.from_v2(dtname)
        shape = tensors.check_shape(name, item.get("shape"))
        iparams = _params(item.get("parameters"), f"input '{name}'")
        size = iparams.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
            if "data" in item:
                raise InvalidArgument(f"input '{name}' has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes left)"
                )
            arr = tensors.from_binary(name, dt, shape, binary[offset : offset + size])
            offset += size
        else:
            if "data" not in item:
                raise InvalidArgument(f"input '{name}' has neither 'data' nor binary_data_size")
            arr = tensors.from_json_data(name, dt, shape, item["data"])
        inputs.append(InputTensor(name, dt.v2, shape, arr, iparams))
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data follow the inputs unclaimed")
    out_pref: dict[str, bool] = {}
    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidArgument("'outputs' must be a list")
        outputs = []
        for o in raw_outputs:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidArgument("each requested output needs a 'name' string")
            oparams = _params(o.get("parameters"), f"output '{o['name']}'")
            if "binary_data" in oparams:
                out_pref[o["name"]] = bool(oparams["binary_data"])
            outputs.append(RequestedOutput(o["name"], oparams))
    binary_all = bool(params.pop("binary_data_output", False))
    req = InferRequest(model_name, model_version, req_id, inputs, outputs, params)
    return req, out_pref, binary_all


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: 'parameters' must be an object")
    return value


def _raw_single_input(body: bytes, model_name: str, model_version: str, mv: ModelVersion) -> InferRequest:
    if len(mv.inputs) != 1:
        raise InvalidArgument(
            f"a raw binary body (Inference-Header-Content-Length: 0) needs a single-input model; "
            f"'{mv.name}' has {len(mv.inputs)} inputs"
        )
    spec = next(iter(mv.inputs.values()))
    dt = datatypes.from_v2(spec.datatype)
    dims = ([1] if mv.max_batch_size > 0 else []) + list(spec.dims)
    unknown = [i for i, d in enumerate(dims) if d < 0]
    if unknown:
        known = 1
        for d in dims:
            known *= d if d >= 0 else 1
        if len(unknown) > 1 or dt.itemsize == 0 or known == 0 or len(body) % (known * dt.itemsize):
            raise InvalidArgument(
                f"a raw binary body cannot be shaped for input '{spec.name}' with dims {dims}"
            )
        dims[unknown[0]] = len(body) // (known * dt.itemsize)
    shape = tensors.check_shape(spec.name, dims)
    arr = tensors.from_binary(spec.name, dt, shape, body)
    return InferRequest(model_name, model_version, "", [InputTensor(spec.name, dt.v2, shape, arr)])


def encode_response(resp: InferResponse, out_pref: dict[str, bool], binary_all: bool) -> tuple[bytes, int | None]:
    """Return the body and, when binary outputs follow the JSON, the JSON header's length."""
    outs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for t in resp.outputs:
        dt = datatypes.BY_V2[t.datatype]
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if t.parameters:
            entry["parameters"] = dict(t.parameters)
        if out_pref.get(t.name, binary_all):
            raw = tensors.to_binary(dt, t.data)
            entry.setdefault("parameters", {})["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = tensors.to_json_data(dt, t.data)
        outs.append(entry)
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = outs
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
