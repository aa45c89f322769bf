"""Bytes of HTTP/1.1 responses: status lines, the Date header, response heads, JSON error bodies.

Kept apart from the connection logic (http11.py) so both the inference path and the ASGI bridge
frame responses the same way.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

import orjson

Headers = list[tuple[bytes, bytes]]

_STATUS_LINES: dict[int, bytes] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
JSON_TYPE = (b"content-type", b"application/json")

# Statuses that never carry a body (RFC 9110 6.4.1); no content-length is invented for them.
NO_BODY_STATUSES = frozenset({204, 304})


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


class _DateCache:
    """The Date header changes once a second; formatting it per response would cost more than the rest."""

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.line


date_line = _DateCache().get


def response_head(status: int, headers: Headers, extra: bytes) -> bytes:
    """Status line, the given headers, then `extra` (already framed header lines) and the date."""
    parts = [status_line(status)]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(extra)
    parts.append(date_line())
    parts.append(b"\r\n")
    return b"".join(parts)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
