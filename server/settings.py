"""One settings object. Precedence: command-line flags > MODELBRIDGE_* environment > config file > defaults."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from server.core.errors import InvalidArgument

ENV_PREFIX = "MODELBRIDGE_"


@dataclass
class Settings:
    model_repository: str = ""          # empty: the example repository shipped in the package
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001               # 0 disables gRPC
    metrics_port: int = 8002            # 0 disables metrics
    max_body_bytes: int = 64 * 1024 * 1024
    grpc_max_message_bytes: int = 0     # 0: same as max_body_bytes
    log_level: str = "info"
    log_format: str = "plain"           # plain | json
    shutdown_grace_secs: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grpc_message_limit(self) -> int:
        return self.grpc_max_message_bytes or self.max_body_bytes


_FIELDS = {f.name: f for f in fields(Settings) if f.name != "extra"}


def _coerce(name: str, value: Any) -> Any:
    kind = type(getattr(Settings(), name))
    try:
        if kind is bool and isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"setting {name}: cannot read {value!r} as {kind.__name__}") from None


def load_settings(
    flags: Mapping[str, Any], *, env: Mapping[str, str] | None = None, config_file: str | None = None
) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        values.update(_read_file(Path(path)))
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    for name, value in flags.items():
        if name in _FIELDS and value is not None:
            values[name] = value
    return dataclasses.replace(Settings(), **{k: _coerce(k, v) for k, v in values.items()})


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read config file {path}: {exc}") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"config file {path} is not valid: {exc}") from None
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise InvalidArgument(f"config file {path}: unknown settings {unknown}")
    return dict(doc)
