"""Errors the router raises about its workers."""

from __future__ import annotations

import grpc

from services.common.errors import ShunterError


class UpstreamError(ShunterError):
    """A worker's own status (e.g. DEADLINE_EXCEEDED, INTERNAL), passed on to the caller.

    UNAVAILABLE also stands for a broken connection or stream: forward_infer retries it
    on another worker.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
