"""Typed exceptions for everything Shunter rejects, each carrying its gRPC status.

Domain code raises these; the gRPC edge (`services.common.edge`) maps them to a status
in exactly one place. Anything else that escapes a handler is INTERNAL with a generic
message for the client and the stack trace in the log.
"""

from __future__ import annotations

import grpc


class ShunterError(Exception):
    """Base class: a message safe to show the client, and the status code to send."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: Sent with the status (e.g. a rate limit's retry-after hint).
    trailing_metadata: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ShunterError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ShunterError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ShunterError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ShunterError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ShunterError):
    """Retryable: a full queue, a draining server, no ready worker, a store outage."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ShunterError):
    """A caller's rate limit or an oversized message (never a full queue)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ShunterError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ShunterError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ShunterError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Cancelled(ShunterError):
    code = grpc.StatusCode.CANCELLED


class EngineError(ShunterError):
    """One batch failed inside an engine; the engine itself is still usable."""

    code = grpc.StatusCode.INTERNAL


class ModelConfigError(ShunterError):
    """A config.yaml that does not validate; the message names the file and the key."""

    code = grpc.StatusCode.INVALID_ARGUMENT
