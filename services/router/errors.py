"""Errors the router raises about its workers."""

from __future__ import annotations

import grpc

from services.common.admission import is_overload
from services.common.errors import ShunterError


class UpstreamError(ShunterError):
    """A worker's own status (e.g. DEADLINE_EXCEEDED, INTERNAL), passed on to the caller.

    UNAVAILABLE also stands for a broken connection or stream: forward_infer retries it
    on another worker. ``hung`` marks a worker that missed the stream link's liveness
    ping (ejected at once); ``overloaded`` a worker's admission refusal (healthy but
    full: retried elsewhere, never counted against the worker).
    """

    def __init__(self, code: grpc.StatusCode, message: str, hung: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.hung = hung

    @property
    def overloaded(self) -> bool:
        return self.code == grpc.StatusCode.UNAVAILABLE and is_overload(self.message)
