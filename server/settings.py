"""One settings object. Precedence: command-line flags > MODELBRIDGE_* environment > config file > defaults."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
    grpc_engine: str = "h2"             # h2: our HTTP/2 layer; grpcio: grpcio's asyncio server (reference)
    log_level: str = "info"
    log_format: str = "plain"           # plain | json
    log_requests: bool = False          # one log line per inference request (with its request id)
    shutdown_grace_secs: float = 10.0
    model_control_mode: str = "explicit"  # none | poll | explicit (Triton's names); all models load at startup
    repository_poll_secs: float = 15.0  # poll mode: seconds between repository scans
    workers: int = 1                    # server processes sharing the ports (SO_REUSEPORT)
    worker_index: int = 0               # set by the supervisor for each worker; not a user setting
    sequence_idle_secs: float = 60.0    # a sequence with no step for this long is dropped
    max_sequences: int = 1024           # live sequences over all models; more -> RESOURCE_EXHAUSTED / 429
    # -- security and limits (README "Security"); keys are secrets: repr=False keeps them out of logs
    admin_keys: str = field(default="", repr=False)      # comma-separated; prefer MODELBRIDGE_ADMIN_KEYS
    inference_keys: str = field(default="", repr=False)  # comma-separated; prefer MODELBRIDGE_INFERENCE_KEYS
    keys_file: str = ""                 # lines '<admin|inference> <key>'
    allow_unauthenticated_admin: bool = False  # without an admin key, administration is refused unless set
    require_inference_key: bool = False  # inference also needs a key (implied when inference keys exist)
    cors_origins: str = ""              # comma-separated allowed origins; empty: CORS off
    model_check_timeout_secs: float = 60.0   # an uploaded model is checked in a child process...
    model_check_memory_mb: int = 2048        # ...with this much address space at most
    max_pending_per_model: int = 4096   # in-flight requests per model version; more -> 503 / UNAVAILABLE
    max_concurrent_requests: int = 0    # REST connections+requests and gRPC rpcs at once; 0: unbounded
    body_timeout_secs: float = 60.0     # a request body must arrive within this; else 408, connection closed
    header_timeout_secs: float = 10.0   # request headers must arrive within this; else connection closed
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
    return _validate(dataclasses.replace(Settings(), **{k: _coerce(k, v) for k, v in values.items()}))


_CHOICES = {"log_level": ("debug", "info", "warning", "error"), "log_format": ("plain", "json"),
            "model_control_mode": ("none", "poll", "explicit"), "grpc_engine": ("h2", "grpcio")}


def _validate(s: Settings) -> Settings:
    # Env and file values skip argparse's checks, so every source is checked here once.
    for name, allowed in _CHOICES.items():
        value = getattr(s, name).lower()
        if value not in allowed:
            raise InvalidArgument(f"setting {name}: {getattr(s, name)!r} is not one of {list(allowed)}")
        setattr(s, name, value)
    for name in ("http_port", "grpc_port", "metrics_port"):
        if not 0 <= getattr(s, name) <= 65535:
            raise InvalidArgument(f"setting {name}: {getattr(s, name)} is not a port number (0-65535)")
    if not 1 <= s.workers <= 256:
        raise InvalidArgument(f"setting workers: {s.workers} is not between 1 and 256")
    if s.model_check_timeout_secs <= 0 or s.model_check_memory_mb < 256 or s.max_pending_per_model < 1:
        raise InvalidArgument("settings model_check_timeout_secs must be > 0, model_check_memory_mb >= 256, "
                              "max_pending_per_model >= 1")
    if s.max_concurrent_requests < 0 or s.body_timeout_secs < 0 or s.header_timeout_secs < 0:
        raise InvalidArgument("settings max_concurrent_requests, body_timeout_secs, header_timeout_secs must be >= 0")
    if s.sequence_idle_secs <= 0 or s.max_sequences < 1:
        raise InvalidArgument("settings sequence_idle_secs must be > 0 and max_sequences >= 1")
    if s.repository_poll_secs <= 0 or s.shutdown_grace_secs < 0:
        raise InvalidArgument("settings repository_poll_secs must be > 0 and shutdown_grace_secs >= 0")
    if s.allow_unauthenticated_admin and not is_loopback(s.host):
        raise InvalidArgument(
            f"refusing --allow-unauthenticated-admin with --host {s.host or '(all interfaces)'}: anyone who can "
            "reach the port could upload models; set an admin key (MODELBRIDGE_ADMIN_KEYS) or bind 127.0.0.1"
        )
    return s


def is_loopback(host: str) -> bool:
    """Only this machine can connect: a loopback address, or the name localhost. Any other name may
    resolve anywhere, so it does not count."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read config file {path}: {exc}") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"config file {path} is not valid: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"config file {path} must hold an object of settings, not {type(doc).__name__}")
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise InvalidArgument(f"config file {path}: unknown settings {unknown}")
    return dict(doc)
