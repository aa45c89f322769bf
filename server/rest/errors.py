"""Error kind -> HTTP status: the one mapping for every REST endpoint."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from server.core.errors import ErrorKind, ModelBridgeError

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.PRECONDITION: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.EXHAUSTED: 429,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.UNSUPPORTED: 501,
    ErrorKind.DEADLINE: 504,
    ErrorKind.INTERNAL: 500,
}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status,
                    media_type="application/json", headers=headers)


def from_error(exc: ModelBridgeError) -> Response:
    headers = {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))} if exc.retry_after else None
    return error_response(HTTP_STATUS[exc.kind], exc.message, headers)
