"""Logging setup: plain text by default, JSON lines with `--log-format json`; request logs carry an id.

Request logs go to the `modelbridge.request` logger at INFO, one line per inference, with the V2
request `id` when the client sent one and a generated id otherwise, so a line can be matched with a
client's request (or grepped across replicas behind a load balancer).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

FORMATS = ("plain", "json")
LEVELS = ("debug", "info", "warning", "error")
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes a LogRecord has of its own; anything else was passed with `extra=` and belongs in JSON.
_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

request_log = logging.getLogger("modelbridge.request")


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str = "info", fmt: str = "plain", *, requests: bool = False) -> None:
    """Install one stderr handler on the root logger (replacing any earlier one). A line per request
    is opt-in (`--log-requests`): at serving rates it would cost more than a small model's inference."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if fmt == "json" else logging.Formatter(PLAIN))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    request_log.setLevel(logging.NOTSET if requests else logging.WARNING)


def request_id(given: str | None) -> str:
    return given if given else uuid.uuid4().hex[:16]


def log_request(
    *, rid: str, model: str, version: str, start_ns: int, error: Exception | None = None
) -> None:
    """One line per inference request. `start_ns` is a time.perf_counter_ns() reading."""
    if not request_log.isEnabledFor(logging.INFO):
        return
    ms = round((time.perf_counter_ns() - start_ns) / 1e6, 3)
    status = "ok" if error is None else getattr(getattr(error, "kind", None), "value", "error")
    detail = "" if error is None else f": {getattr(error, 'message', str(error))[:300]}"
    request_log.info(
        "infer model=%s version=%s request_id=%s status=%s duration_ms=%s%s",
        model, version or "latest", rid, status, ms, detail,
        extra={"request_id": rid, "model": model, "model_version": version, "status": status, "duration_ms": ms},
    )


def log_start(*, rid: str, model: str, version: str) -> None:
    """At DEBUG: the request reached the core (it was accepted); pairs with log_request's line."""
    if request_log.isEnabledFor(logging.DEBUG):
        request_log.debug("infer start model=%s version=%s request_id=%s", model, version or "latest", rid,
                          extra={"request_id": rid, "model": model, "model_version": version, "status": "start"})
