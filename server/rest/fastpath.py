"""The inference route as bytes in, bytes out.

POST .../infer is the one route that carries load; routing it through FastAPI's request objects,
dependency resolution and response classes costs more than running a small model. `infer_handler`
does the same translation as every other route (bytes -> codec -> service -> codec -> bytes) with
nothing in between: server.rest.http11 calls it without any ASGI at all, and the FastAPI route (kept
for /openapi.json and ASGI hosting) wraps the same function.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson

from server.core.auth import KeyRing
from server.core.auth import Scope as AuthScope
from server.core.errors import ErrorKind, ModelBridgeError
from server.core.service import InferenceService
from server.rest import codec
from server.rest.errors import HTTP_STATUS

log = logging.getLogger("modelbridge.rest")

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


Headers = list[tuple[bytes, bytes]]
InferResult = tuple[int, Headers, bytes]
# (model, version, body, Inference-Header-Content-Length, request headers) -> (status, headers, payload);
# the transport adds content-length and framing.
InferHandler = Callable[[str, str, bytes, "str | None", Headers], Awaitable[InferResult]]


def infer_handler(service: InferenceService) -> InferHandler:
    """The inference route as bytes in, bytes out: shared by http11's server and the FastAPI route."""

    async def handle(model: str, version: str, body: bytes, header_length: str | None,
                     headers: Headers) -> InferResult:
        try:
            mv = service.model_version(model, version)  # an unknown model is a 404 whatever the body
            req, pref, binary_all = codec.decode_request(body, header_length, model, version, mv)
            resp = await service.infer(req)
            payload, json_len = codec.encode_response(resp, pref, binary_all)
        except ModelBridgeError as exc:
            return error_result(HTTP_STATUS[exc.kind], exc.message, exc.retry_after)
        except Exception:  # a bug must still answer, and be logged
            log.exception("unexpected error in inference")
            return error_result(500, "internal error during inference", None)
        if json_len is None:
            return 200, _JSON_HEADERS, payload
        return 200, [(b"content-type", b"application/octet-stream"),
                     (b"inference-header-content-length", str(json_len).encode())], payload

    return handle


def error_result(status: int, message: str, retry_after: float | None,
                 extra: Headers | None = None) -> InferResult:
    headers = list(_JSON_HEADERS)
    if retry_after:
        headers.append((b"retry-after", str(max(1, int(retry_after + 0.999))).encode()))
    if extra:
        headers.extend(extra)
    return status, headers, orjson.dumps({"error": message})


def secure_infer(handler: InferHandler, keys: KeyRing, *, cors_origins: list[str]) -> InferHandler:
    """What server.rest.security's layers do for POST .../infer, for a server that calls `handler` without
    ASGI: the API key check (inference scope), and CORSMiddleware's headers on the answer."""
    from server.rest.security import cors_headers

    cors = cors_headers(cors_origins)

    async def handle(model: str, version: str, body: bytes, header_length: str | None,
                     headers: Headers) -> InferResult:
        if not keys.inference_open:
            authorization = None
            for name, value in headers:
                if name == b"authorization":
                    authorization = value
                    break
            try:
                keys.check(AuthScope.INFERENCE, authorization)
            except ModelBridgeError as exc:
                extra = ([(b"www-authenticate", b'Bearer realm="modelbridge"')]
                         if exc.kind is ErrorKind.UNAUTHENTICATED else [])
                result = error_result(HTTP_STATUS[exc.kind], exc.message, None, extra)
                return (result[0], cors(headers, result[1]), result[2]) if cors_origins else result
        status, answer, payload = await handler(model, version, body, header_length, headers)
        return (status, cors(headers, answer), payload) if cors_origins else (status, answer, payload)

    return handle
