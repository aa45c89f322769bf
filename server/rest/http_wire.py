"""HTTP/1.1 on the wire: the parsed request, its target, and the bytes of responses (status lines,
the Date header, response heads, JSON error bodies).

Kept apart from the connection logic (http_connection.py) so the inference path and the ASGI bridge
read requests and frame responses the same way.
"""

from __future__ import annotations

import asyncio
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

import httptools
import orjson

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]            # status, headers, payload: a response made before the app runs
Target = tuple[bytes, bytes, str]              # raw path, query string, percent-decoded path

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
        "chunk_head",
        "chunked",
        "chunks",
        "complete",
        "content_length",
        "drain",
        "error",
        "expect_continue",
        "framing",
        "head_bytes",
        "header_length",
        "headers",
        "headers_done",
        "host",
        "hosts",
        "http_version",
        "infer",
        "keep_alive",
        "method",
        "size",
        "target",
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
        self.head_bytes = 0                        # request line and header fields seen so far (then trailers)
        self.chunk_head = False                    # a chunk-size line parsed, none of its data yet (or trailers)
        self.framing = 0                           # bytes read since then that carried no body byte
        self.hosts = 0
        self.host = b""
        self.target: Target = (b"/", b"", "/")
        self.infer: tuple[str, str] | None = None   # (model, version) of an inference request
        # A refusal decided before the app: answered in the request's turn without waiting for its body,
        # then the connection closes, or with `drain` it stays open and the body is read and dropped.
        self.error: Answer | None = None
        self.drain = False

    def body(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# RFC 3986 authority (RFC 9110 7.2: Host = uri-host [ ":" port ]); no userinfo (RFC 9110 4.2.4).
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")


def valid_host(value: bytes) -> bool:
    return _HOST.fullmatch(value) is not None


def parse_target(method: bytes, url: bytes) -> tuple[Target, bytes | None] | None:
    """The request target (RFC 9112 3.2) -> ((raw path, query, decoded path), the authority of an
    absolute-form target or None); None when it is not one a server accepts here: the authority-form
    (CONNECT's alone), an asterisk-form but for OPTIONS, an absolute-form that is not http(s) or has no
    host or has userinfo; any with a fragment. llhttp has already refused spaces, controls and non-ASCII bytes."""
    authority = None
    if b"#" in url:
        return None   # a fragment is never part of a request target
    if url[:1] == b"/":
        q = url.find(b"?")
        raw_path, query = (url, b"") if q < 0 else (url[:q], url[q + 1:])
    elif url == b"*":
        if method != b"OPTIONS":
            return None
        raw_path, query = url, b""
    else:
        # absolute-form: a server MUST accept it (RFC 9112 3.2.2) and serve its path; its authority
        # stands in for Host
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return None
        if (parsed.schema or b"").lower() not in (b"http", b"https") or not parsed.host or parsed.userinfo:
            return None
        authority = url.split(b"//", 1)[1].split(b"/", 1)[0].split(b"?", 1)[0]
        raw_path, query = parsed.path or b"/", parsed.query or b""
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path)
    return (raw_path, query, path), authority
