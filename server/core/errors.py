"""The one error tree of modelbridge, independent of any transport.

    ModelBridgeError                 kind            HTTP   gRPC
    ├── InvalidArgument              INVALID         400    INVALID_ARGUMENT
    │   └── PayloadTooLarge          TOO_LARGE       413    RESOURCE_EXHAUSTED
    ├── FailedPrecondition           PRECONDITION    400    FAILED_PRECONDITION
    ├── NotFound                     NOT_FOUND       404    NOT_FOUND
    ├── AlreadyExists                CONFLICT        409    ALREADY_EXISTS
    ├── Unavailable                  UNAVAILABLE     503    UNAVAILABLE
    ├── ResourceExhausted            EXHAUSTED       429    RESOURCE_EXHAUSTED
    ├── Unauthenticated              UNAUTHENTICATED 401    UNAUTHENTICATED
    ├── PermissionDenied             FORBIDDEN       403    PERMISSION_DENIED
    ├── Unsupported                  UNSUPPORTED     501    UNIMPLEMENTED
    ├── DeadlineExceeded             DEADLINE        504    DEADLINE_EXCEEDED
    └── InternalError                INTERNAL        500    INTERNAL

Transports map `kind` once (server/rest/errors.py, server/grpc/errors.py); nothing else
decides a status code.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID = "invalid_argument"
    TOO_LARGE = "payload_too_large"
    PRECONDITION = "failed_precondition"
    NOT_FOUND = "not_found"
    CONFLICT = "already_exists"
    UNAVAILABLE = "unavailable"
    EXHAUSTED = "resource_exhausted"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "permission_denied"
    UNSUPPORTED = "unsupported"
    DEADLINE = "deadline_exceeded"
    INTERNAL = "internal"


class ModelBridgeError(Exception):
    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Seconds a client should wait before retrying (overload); transports may surface it.
        self.retry_after = retry_after


class InvalidArgument(ModelBridgeError):
    kind = ErrorKind.INVALID


class PayloadTooLarge(InvalidArgument):
    kind = ErrorKind.TOO_LARGE


class FailedPrecondition(ModelBridgeError):
    kind = ErrorKind.PRECONDITION


class NotFound(ModelBridgeError):
    kind = ErrorKind.NOT_FOUND


class AlreadyExists(ModelBridgeError):
    kind = ErrorKind.CONFLICT


class Unavailable(ModelBridgeError):
    kind = ErrorKind.UNAVAILABLE


class ResourceExhausted(ModelBridgeError):
    kind = ErrorKind.EXHAUSTED


class Unauthenticated(ModelBridgeError):
    kind = ErrorKind.UNAUTHENTICATED


class PermissionDenied(ModelBridgeError):
    kind = ErrorKind.FORBIDDEN


class Unsupported(ModelBridgeError):
    kind = ErrorKind.UNSUPPORTED


class DeadlineExceeded(ModelBridgeError):
    kind = ErrorKind.DEADLINE


class InternalError(ModelBridgeError):
    kind = ErrorKind.INTERNAL
