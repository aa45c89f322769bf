"""Triton's ModelConfig (the subset we honour): read from config.pbtxt / config.json, completed from
the ONNX graph as Triton's auto-complete does, and checked against the graph.

The config is kept as a dict in Triton's JSON form, so REST returns it as it is and gRPC parses it
into the ModelConfig message with protobuf's json_format.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.core import datatypes, pbtxt
from server.core.errors import InvalidArgument

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
            text = path.read_text(encoding="utf-8")
            return parse_config_text(text, json_form=fname.endswith(".json"))
    return None


def parse_config_text(text: str, *, json_form: bool) -> dict[str, Any]:
    if json_form or text.lstrip().startswith("{") and _looks_like_json(text):
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"model config is not valid JSON: {exc}") from None
        if not isinstance(cfg, dict):
            raise InvalidArgument("model config JSON must be an object")
        for key in ("input", "output", "instance_group"):
            if key in cfg and isinstance(cfg[key], dict):
                cfg[key] = [cfg[key]]
        return cfg
    return pbtxt.loads(text)


def _looks_like_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


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
