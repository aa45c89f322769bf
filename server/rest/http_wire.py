"""HTTP/1.1 on the wire: the parsed request, its target, and the bytes of responses (status lines,
the Date header, response heads, JSON error bodies).

Kept apart from the connection logic (http_connection.py) so the inference path and the ASGI bridge
read requests and frame responses the same way.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

import httptools
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


class Request:
    __slots__ = (
        "chunked",
        "chunks",
        "complete",
        "content_length",
        "error",
        "expect_continue",
        "header_length",
        "headers",
        "headers_done",
        "http_version",
        "keep_alive",
        "method",
        "size",
        "url",
        "waiter",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.http_version = "1.1"
        self.keep_alive = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.headers_done = False
        self.waiter: asyncio.Future[None] | None = None
        self.expect_continue = False
        self.content_length = 0
        self.chunked = False
        self.header_length: str | None = None      # Inference-Header-Content-Length
        self.error: tuple[int, str] | None = None  # answered with this status and closed

    def body(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def split_target(url: bytes) -> tuple[bytes, bytes, str]:
    """Request target -> (raw path, query string, percent-decoded path)."""
    q = url.find(b"?")
    raw_path, query = (url, b"") if q < 0 else (url[:q], url[q + 1:])
    if raw_path[:1] != b"/" and raw_path != b"*":   # absolute-form (proxies): keep only the path
        parsed = httptools.parse_url(url)
        raw_path, query = parsed.path or b"/", parsed.query or b""
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path)
    return raw_path, query, path
