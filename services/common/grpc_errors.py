"""The one place where Shunter exceptions become gRPC statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.common.errors import ShunterError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and client-safe message for an exception raised while serving."""
    if isinstance(exc, ShunterError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, "internal error (see server log)"


def grpc_method(
    fn: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Wrap an async unary servicer method so typed exceptions abort with their status."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except ShunterError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            logger.exception("unhandled error in %s", fn.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see server log)")
        raise AssertionError("unreachable")  # context.abort always raises

    return wrapper
