"""The inference hot path as a bare ASGI handler in front of the FastAPI app.

POST .../infer is the one route that carries load; routing it through FastAPI's request objects,
dependency resolution and response classes costs more than running a small model. This handler
does the same translation as every other route (bytes -> codec -> service -> codec -> bytes) with
nothing in between; everything else falls through to FastAPI.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from server.core.errors import ModelBridgeError, PayloadTooLarge
from server.core.service import InferenceService
from server.rest import codec
from server.rest.errors import HTTP_STATUS

log = logging.getLogger("modelbridge.rest")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


def parse_infer_path(path: str) -> tuple[str, str] | None:
    """'/v2/models/m/infer' -> ('m', ''); '/v2/models/m/versions/3/infer' -> ('m', '3'); else None."""
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path[11:-6].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], ""
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class InferFastPath:
    def __init__(self, app: Callable[..., Awaitable[None]], service: InferenceService, *, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = parse_infer_path(scope["path"])
            if target is not None:
                await self.infer(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    async def infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str) -> None:
        header_len: str | None = None
        declared = -1
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_len = value.decode("latin-1")
            elif key == b"content-length" and value.isdigit():
                declared = int(value)
        try:
            if declared > self.max_body_bytes:
                raise PayloadTooLarge(
                    f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes} bytes"
                )
            body = await self._read_body(receive)
            mv = self.service.model_version(model, version)  # an unknown model is a 404 whatever the body
            req, pref, binary_all = codec.decode_request(body, header_len, model, version, mv)
            resp = await self.service.infer(req)
            payload, json_len = codec.encode_response(resp, pref, binary_all)
        except ModelBridgeError as exc:
            await _send_error(send, HTTP_STATUS[exc.kind], exc.message, exc.retry_after)
            return
        except Exception:  # a bug must still answer, and be logged
            log.exception("unexpected error in inference")
            await _send_error(send, 500, "internal error during inference", None)
            return
        if json_len is None:
            headers = _JSON_HEADERS
        else:
            headers = [(b"content-type", b"application/octet-stream"),
                       (b"inference-header-content-length", str(json_len).encode())]
        await send({"type": "http.response.start", "status": 200,
                    "headers": headers + [(b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, receive: Receive) -> bytes:
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > self.max_body_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes")
            return body
        chunks = [body]
        total = len(body)
        while message.get("more_body"):
            message = await receive()
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


async def _send_error(send: Send, status: int, message: str, retry_after: float | None) -> None:
    import orjson

    body = orjson.dumps({"error": message})
    headers = _JSON_HEADERS + [(b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", str(max(1, int(retry_after + 0.999))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
