"""Triton's ModelConfig: read from config.pbtxt / config.json by protobuf's text_format / json_format
against proto/model_config.proto (Triton's message and field names), completed from the ONNX graph as
Triton's auto-complete does, and checked against the graph.

The config is kept as a dict in Triton's JSON form, so REST returns it as it is and gRPC parses it
into the ModelConfig message with protobuf's json_format.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from server.core import datatypes
from server.core.errors import InvalidArgument

# The generated stubs live with the gRPC transport (one generated package, made by scripts/gen_proto.py);
# the core uses only the ModelConfig message, to let protobuf itself read and check config files.
from server.grpc._generated import model_config_pb2 as mc

log = logging.getLogger("modelbridge")

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Triton's default when it auto-completes a model that can batch.
DEFAULT_MAX_BATCH_SIZE = 4
CONFIG_FILES = ("config.pbtxt", "config.json")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as clients see it (metadata shape includes the batch dim as -1)."""

    name: str
    datatype: str            # V2 name
    dims: tuple[int, ...]    # without the batch dim when max_batch_size > 0; -1 = variable
    optional: bool = False

    def metadata(self, max_batch_size: int) -> dict[str, Any]:
        shape = ([-1] if max_batch_size > 0 else []) + list(self.dims)
        return {"name": self.name, "datatype": self.datatype, "shape": shape}


def read_config_file(model_dir: Path) -> dict[str, Any] | None:
    for fname in CONFIG_FILES:
        path = model_dir / fname
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidArgument(f"{path}: cannot read the model config: {exc}") from None
            cfg = parse_config_text(text, json_form=fname.endswith(".json"), source=str(path))
            if ignored := not_acted_on(cfg):
                log.warning("%s: Triton settings modelbridge accepts but does not act on: %s", path, ", ".join(ignored))
            return cfg
    return None


# Top-level ModelConfig fields whose settings this server carries out; the others (optimization, warmup,
# ensembles, rate limits...) are valid Triton, kept and echoed back, and named in a warning when a model loads.
ACTED_ON = frozenset({
    "name", "platform", "backend", "version_policy", "max_batch_size", "input", "output", "instance_group",
    "default_model_filename", "dynamic_batching", "sequence_batching", "parameters", "model_transaction_policy",
})


def not_acted_on(config: dict[str, Any]) -> list[str]:
    return sorted(set(config) - ACTED_ON)


def parse_config_text(text: str, *, json_form: bool, source: str = "model config") -> dict[str, Any]:
    """A config.pbtxt (protobuf text format) or config.json, checked against Triton's ModelConfig message
    by protobuf itself: an unknown field, a wrong type or a bad enum value is an InvalidArgument whose
    message names the field and `source:line`. Returns Triton's JSON form (int64 as numbers)."""
    message = mc.ModelConfig()
    if json_form:
        _parse_json(text, message, source)
    else:
        try:
            text_format.Parse(text, message)
        except text_format.ParseError as exc:
            detail = re.sub(r"^\d+:\d+ : ", "", str(exc))
            raise InvalidArgument(f"{source}:{exc.GetLine()}:{exc.GetColumn()}: {detail}") from None
    return config_to_dict(message)


def _parse_json(text: str, message: Message, source: str) -> None:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{source}: the model config must be a JSON object")
    for key in ("input", "output", "instance_group"):
        if isinstance(doc.get(key), dict):  # one entry written without its list, as the text format allows
            doc[key] = [doc[key]]
    try:
        json_format.ParseDict(doc, message)
    except json_format.ParseError as exc:
        detail = str(exc).split("\n")[0]
        # json_format names the field but not where it is: point at the innermost field it names.
        names = re.findall(r'(?:no field named "|Failed to parse )(\w+)', detail)
        line = _json_line(text, names[-1]) if names else None
        raise InvalidArgument(f"{source}{f':{line}' if line else ''}: {detail}") from None


def _json_line(text: str, field: str) -> int | None:
    m = re.search(rf'"{re.escape(field)}"\s*:', text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def config_to_dict(message: Message) -> dict[str, Any]:
    """Triton's JSON form of a ModelConfig: field names as in the .proto, enums by name, 64-bit integers as
    numbers (json_format writes them as strings; Triton's config endpoint does not). Fields left at their
    default are absent, so auto-complete fills them as Triton's does."""
    out = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _ints(out, message.DESCRIPTOR)
    return out


_INT64 = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}


def _ints(doc: dict[str, Any], desc: Descriptor) -> None:
    for key, value in doc.items():
        field = desc.fields_by_name[key]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.message_type is not None:
                    _ints(v, value_field.message_type)
                elif value_field.cpp_type in _INT64:
                    value[k] = int(v)
        elif field.message_type is not None:
            for item in value if isinstance(value, list) else [value]:
                _ints(item, field.message_type)
        elif field.cpp_type in _INT64:
            doc[key] = [int(v) for v in value] if isinstance(value, list) else int(value)


def config_to_text(config: dict[str, Any]) -> str:
    """The config.pbtxt form of a config in Triton's JSON form."""
    message = mc.ModelConfig()
    json_format.ParseDict(config, message)
    return text_format.MessageToString(message)


@dataclass
class GraphIO:
    """What the ONNX graph itself declares."""

    name: str
    datatype: str
    shape: list[int]   # -1 for symbolic/unknown dims


def complete(
    name: str, given: dict[str, Any] | None, inputs: list[GraphIO], outputs: list[GraphIO]
) -> dict[str, Any]:
    """Fill a config the way Triton's onnxruntime backend auto-completes, then validate it."""
    cfg = copy.deepcopy(given) if given else {}
    if cfg.get("name") not in (None, "", name):
        raise InvalidArgument(f"config name '{cfg['name']}' does not match model directory '{name}'")
    cfg["name"] = name
    if cfg.get("platform") not in (None, "", PLATFORM):
        raise InvalidArgument(f"platform '{cfg['platform']}' is not supported; only {PLATFORM}")
    if cfg.get("backend") not in (None, "", BACKEND):
        raise InvalidArgument(f"backend '{cfg['backend']}' is not supported; only {BACKEND}")
    cfg["platform"] = PLATFORM
    cfg["backend"] = BACKEND

    batchable = bool(inputs) and all(io.shape and io.shape[0] == -1 for io in inputs + outputs)
    if "max_batch_size" not in cfg:
        cfg["max_batch_size"] = DEFAULT_MAX_BATCH_SIZE if batchable else 0
        # Triton's auto-complete: a model it finds can batch, with no scheduler configured, gets the
        # dynamic batcher with default settings (no delay: it batches what arrives together).
        if batchable and not {"dynamic_batching", "sequence_batching"} & cfg.keys():
            cfg["dynamic_batching"] = {}
    mbs = cfg["max_batch_size"]
    if isinstance(mbs, bool) or not isinstance(mbs, int) or mbs < 0:
        raise InvalidArgument(f"max_batch_size must be a non-negative integer, got {mbs!r}")
    if mbs > 0 and not batchable:
        raise InvalidArgument(
            f"max_batch_size {mbs} needs a variable first dimension on every input and output"
        )

    cfg["input"] = _merge_io("input", cfg.get("input"), inputs, mbs)
    cfg["output"] = _merge_io("output", cfg.get("output"), outputs, mbs)
    cfg.setdefault("version_policy", {"latest": {"num_versions": 1}})
    _check_version_policy(cfg["version_policy"])
    groups = cfg.setdefault("instance_group", [{"count": 1, "kind": "KIND_CPU"}])
    for g in groups:
        g.setdefault("count", 1)
        g.setdefault("kind", "KIND_CPU")
        if not isinstance(g["count"], int) or g["count"] < 1:
            raise InvalidArgument(f"instance_group count must be a positive integer, got {g['count']!r}")
    cfg.setdefault("default_model_filename", "model.onnx")
    cfg.setdefault("model_transaction_policy", {"decoupled": False})
    if "dynamic_batching" in cfg:
        db = cfg["dynamic_batching"] or {}
        if mbs == 0:
            raise InvalidArgument("dynamic_batching needs max_batch_size > 0")
        db.setdefault("preferred_batch_size", [])
        db.setdefault("max_queue_delay_microseconds", 0)
        cfg["dynamic_batching"] = db
    cfg.setdefault("parameters", {})
    return cfg


def _merge_io(kind: str, given: list[dict] | None, graph: list[GraphIO], mbs: int) -> list[dict[str, Any]]:
    by_name = {io.name: io for io in graph}
    out: list[dict[str, Any]] = []
    seen = set()
    for entry in given or []:
        nm = entry.get("name")
        if nm not in by_name:
            raise InvalidArgument(f"config {kind} '{nm}' is not in the ONNX graph (graph has {sorted(by_name)})")
        io = by_name[nm]
        dt = entry.get("data_type")
        if dt is not None and datatypes.from_config(dt).v2 != io.datatype:
            raise InvalidArgument(
                f"config {kind} '{nm}' says {dt} but the ONNX graph has {datatypes.BY_V2[io.datatype].config}"
            )
        merged = dict(entry)
        merged["data_type"] = datatypes.BY_V2[io.datatype].config
        merged.setdefault("dims", _dims(io, mbs))
        merged["dims"] = [int(d) for d in merged["dims"]]
        out.append(merged)
        seen.add(nm)
    for io in graph:
        if io.name not in seen:
            out.append({"name": io.name, "data_type": datatypes.BY_V2[io.datatype].config, "dims": _dims(io, mbs)})
    return out


def _dims(io: GraphIO, mbs: int) -> list[int]:
    return list(io.shape[1:] if mbs > 0 else io.shape)


def _check_version_policy(policy: Any) -> None:
    if not isinstance(policy, dict) or len(policy) != 1 or next(iter(policy)) not in ("latest", "all", "specific"):
        raise InvalidArgument(f"version_policy must be one of latest/all/specific, got {policy!r}")


def select_versions(policy: dict[str, Any], available: list[int]) -> list[int]:
    """Versions that the policy serves, newest first."""
    avail = sorted(available, reverse=True)
    if "all" in policy:
        return avail
    if "specific" in policy:
        wanted = {int(v) for v in policy["specific"].get("versions", [])}
        return [v for v in avail if v in wanted]
    n = int(policy.get("latest", {}).get("num_versions", 1))
    return avail[: max(n, 0)]


def tensor_specs(cfg: dict[str, Any], kind: str) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=e["name"],
            datatype=datatypes.from_config(e["data_type"]).v2,
            dims=tuple(int(d) for d in e.get("dims", [])),
            optional=bool(e.get("optional", False)),
        )
        for e in cfg[kind]
    ]
