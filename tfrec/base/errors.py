"""One error type for the whole server: a canonical code plus TF-Serving's message.

Every failure a client can see is a `ServingError`. Transports translate it once: gRPC maps
`code` one-to-one onto `grpc.StatusCode`; REST maps it with `http_status()` (TF-Serving's
`ToHTTPStatusCode`). The codes are TensorFlow's `error.Code` numbers, which are also gRPC's.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical status codes (tensorflow/core/protobuf/error_codes.proto == gRPC codes)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


def http_status(code: Code) -> int:
    """TF-Serving's gRPC-code -> HTTP-status table (http_server.cc ToHTTPStatusCode)."""
    return _HTTP_STATUS.get(code, 500)


class ServingError(Exception):
    """A failure with a canonical code and the exact message TF-Serving would send."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class InvalidArgument(ServingError):
    code = Code.INVALID_ARGUMENT


class NotFound(ServingError):
    code = Code.NOT_FOUND


class FailedPrecondition(ServingError):
    code = Code.FAILED_PRECONDITION


class Unimplemented(ServingError):
    code = Code.UNIMPLEMENTED


class Internal(ServingError):
    code = Code.INTERNAL


class Unavailable(ServingError):
    code = Code.UNAVAILABLE


class ResourceExhausted(ServingError):
    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    code = Code.DEADLINE_EXCEEDED


def _text(message: object) -> str:
    """An error text as str; bytes (a C++ status message) decoded, invalid UTF-8 replaced."""
    if isinstance(message, bytes | bytearray):
        return bytes(message).decode("utf-8", "replace")
    return str(message)


def from_tf_error(err: Exception) -> ServingError:
    """Converts a failed session run into a ServingError.

    A `tf.errors.OpError` keeps its code. A `UnicodeDecodeError` is what TensorFlow's Python
    binding raises instead when the status message is not UTF-8 (a kernel quoting a client's
    binary string, as ParseExample does): its code is lost with it, and such a message quotes
    the request, so it becomes INVALID_ARGUMENT with the message decoded leniently.
    """
    if isinstance(err, UnicodeDecodeError):
        return InvalidArgument(_text(err.object))
    code = getattr(err, "error_code", None)
    message = _text(getattr(err, "message", None) or err)
    try:
        return ServingError(message, Code(int(code))) if code is not None else Internal(message)
    except ValueError:
        return ServingError(message, Code.UNKNOWN)
