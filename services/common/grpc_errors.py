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


class _Undecodable:
    """What a tolerant deserializer hands the handler instead of raising."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _MalformedLog:
    """One WARNING per interval for undecodable messages, with the count since the last one.

    A client sending garbage in a loop must not turn the log into its echo.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last = float("-inf")
        self._suppressed = 0

    def note(self, method: str, error: Exception) -> None:
        import time

        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        logger.warning("%s: refused an undecodable message (%s); %d more since the last warning",
                       method, error, self._suppressed)
        self._last, self._suppressed = now, 0


_malformed_log = _MalformedLog()


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a custom parser raises
            return _Undecodable(exc)

    return parse


def _refusing_unary(method: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            _malformed_log.note(method, request.error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request is not a valid message")
        return await behaviour(request, context)

    return handle


class MalformedRequestsRefused(grpc.GenericRpcHandler):
    """Wrap generated method handlers so an unparseable unary request is INVALID_ARGUMENT.

    grpc answers a request its deserializer cannot parse with UNKNOWN and the exception's
    text, and logs it at ERROR; a malformed message is the client's error and gets the
    client's status, logged at most once per interval. Streams keep grpc's own handling.
    """

    def __init__(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service_name = service
        self.by_name: dict[str, grpc.RpcMethodHandler] = {}
        for name, handler in handlers.items():
            if handler.unary_unary is not None and handler.request_deserializer is not None:
                handler = grpc.unary_unary_rpc_method_handler(
                    _refusing_unary(name, handler.unary_unary),
                    request_deserializer=_tolerant(handler.request_deserializer),
                    response_serializer=handler.response_serializer,
                )
            self.by_name[name] = handler
        self._by_path = {f"/{service}/{name}": handler for name, handler in self.by_name.items()}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._by_path.get(handler_call_details.method)


def add_refusing_malformed(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """Register a generated ``add_*Servicer_to_server`` with malformed requests refused.

    The generated function is given a recorder instead of the server, so the method table
    stays the one protoc wrote.
    """

    class _Recorder:
        def __init__(self) -> None:
            self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

        def add_generic_rpc_handlers(self, _handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            self.handlers[service] = handlers

    recorder = _Recorder()
    add_to_server(servicer, recorder)
    for service, handlers in recorder.handlers.items():
        refusing = MalformedRequestsRefused(service, handlers)
        server.add_generic_rpc_handlers((refusing,))
        # Registered methods skip the generic lookup per call, as the generated code does.
        server.add_registered_method_handlers(service, refusing.by_name)
