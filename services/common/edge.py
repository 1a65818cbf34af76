"""The one gRPC edge of every Shunter service: handlers, statuses, RPC metrics, interceptors.

Router, worker and registry build their gRPC handlers here (``Edge.handler``), so where any
RPC's status, metric or span comes from is this file:

- **Status.** Domain code raises the typed exceptions of ``services.common.errors``; the
  wrappers below turn one into its status, its client-safe message and any trailing
  metadata it carries (``ShunterError.trailing_metadata``). Any other exception is INTERNAL
  with a generic message, and its stack goes to the log. A request that does not parse as
  its message type is INVALID_ARGUMENT, logged at most once per ``LOG_INTERVAL_S``: a
  client sending garbage must not flood the log.
- **Labels.** Each call, and each message of a bidirectional stream, runs with its
  ``RpcCall`` in the ``CURRENT`` contextvar. Domain code calls ``label(model, version)``
  once it has found the model, and ``label(UNKNOWN_MODEL)`` when the name it was given is
  not one it serves, so a client's strings never become metric labels.
- **Interceptors.** An ``Edge`` runs a chain of ``Interceptor``s around every call:
  ``begin`` in order before the handler, ``end`` in reverse order after it, with the
  call's final code, labels and duration. ``RpcMetrics`` (count, latency, in-flight) is
  always the first. This is the hook for what comes next (tracing, model-output metrics,
  rollout statistics): one ``Interceptor`` each, added with ``Edge.add`` where the service
  is built, and it sees every RPC of that service. Hooks are synchronous and must not raise;
  one that needs the request's metadata reads ``call.context.invocation_metadata()``, and
  one that keeps per-call state keeps it in ``call.state``.

The data-plane handlers take and return bytes (``Raw``, ``BidiStream``), and ``Unary``
parses its request here instead of in gRPC's deserializer, because a deserializer failure
inside gRPC becomes UNKNOWN with the exception text and an ERROR log line per message.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from services.common import metrics as common_metrics
from services.common.errors import InvalidArgument, ShunterError

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

#: The model label of a call that named a model this process does not serve.
UNKNOWN_MODEL = "_unknown"
#: What a client is told about an error that is not a ShunterError.
INTERNAL_MESSAGE = "internal error (see server log)"
#: Least seconds between two log lines about unparseable requests (per service and method).
LOG_INTERVAL_S = 10.0

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
#: ``RpcCall.state`` key of the exemplar labels (``{"trace_id": ...}``) the tracing
#: interceptor leaves for the latency histogram.
EXEMPLAR = "exemplar"


class RpcCall:
    """One call (or one message of a bidirectional stream) as the interceptors see it."""

    __slots__ = ("code", "context", "method", "model", "seconds", "service", "started", "state", "version")

    def __init__(self, service: str, method: str, context: grpc.aio.ServicerContext) -> None:
        self.service = service
        self.method = method
        self.context = context
        self.model = ""
        self.version = ""
        self.code = grpc.StatusCode.OK
        #: time.perf_counter() when the edge took the call.
        self.started = time.perf_counter()
        #: Set just before the ``end`` hooks run.
        self.seconds = 0.0
        #: For interceptors that keep something between begin and end (keyed by their name).
        self.state: dict[str, Any] | None = None


#: The call being handled in this task; None outside the edge.
CURRENT: ContextVar[RpcCall | None] = ContextVar("shunter_rpc_call", default=None)


def label(model: str, version: str = "") -> None:
    """Name the model and version the current call is about (only names this process knows)."""
    call = CURRENT.get()
    if call is not None:
        call.model = model
        call.version = version


class Interceptor:
    """A hook around every RPC of one Edge; override either method. Must not raise."""

    def begin(self, call: RpcCall) -> None:
        """Runs before the handler, in chain order."""

    def end(self, call: RpcCall) -> None:
        """Runs after the handler, in reverse chain order; ``call.code`` is final."""


class RpcMetrics(Interceptor):
    """``shunter_requests`` by method, model, version and code; latency; in-flight calls.

    Labelled children are cached: ``labels()`` costs more than the update itself.
    """

    def __init__(self, service: str) -> None:
        self._service = service
        self._counters: dict[tuple[str, str, str, grpc.StatusCode], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}
        self._in_flight: dict[str, Any] = {}

    def _gauge(self, method: str) -> Any:
        gauge = self._in_flight.get(method)
        if gauge is None:
            gauge = self._in_flight[method] = common_metrics.IN_FLIGHT.labels(self._service, method)
        return gauge

    def begin(self, call: RpcCall) -> None:
        self._gauge(call.method).inc()

    def end(self, call: RpcCall) -> None:
        method, model = call.method, call.model
        self._gauge(method).dec()
        key = (method, model, call.version, call.code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = common_metrics.REQUESTS.labels(
                self._service, method, model, call.version, call.code.name
            )
        counter.inc()
        hkey = (method, model)
        histogram = self._histograms.get(hkey)
        if histogram is None:
            histogram = self._histograms[hkey] = common_metrics.REQUEST_LATENCY.labels(self._service, method, model)
        # A traced call's trace id rides on its latency sample as an OpenMetrics exemplar.
        histogram.observe(call.seconds, call.state.get(EXEMPLAR) if call.state else None)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and client-safe message for an exception raised while serving."""
    if isinstance(exc, ShunterError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The code a handler set on its context (gRPC keeps an int or a StatusCode there)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return _CODES_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)


class _RateLimitedLog:
    """Logs a repeated warning at most once per interval, saying how many were left out."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        left_out = self._suppressed.pop(key, 0)
        if left_out:
            logger.warning(message + " (%d more since the last such line)", *args, left_out)
        else:
            logger.warning(message, *args)


_unparseable_log = _RateLimitedLog()


def parse(message_type: type[M], raw: bytes) -> M:
    """``raw`` parsed as ``message_type``; INVALID_ARGUMENT (and a rate-limited log line) if it is not one."""
    try:
        return message_type.FromString(raw)
    except DecodeError:
        name = message_type.DESCRIPTOR.name
        call = CURRENT.get()
        where = f"{call.service} {call.method}" if call is not None else name
        _unparseable_log.warning(where, "%s: a request (%d bytes) is not a valid %s", where, len(raw), name)
        raise InvalidArgument(f"the request is not a valid {name}") from None


# -- what a service's methods are ------------------------------------------------------


@dataclass(frozen=True)
class Unary:
    """``fn(request message, context) -> response message``; the edge parses and serialises."""

    fn: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]
    request_type: type[Message]


@dataclass(frozen=True)
class Raw:
    """``fn(request bytes, context) -> response bytes``: the fast path, nothing re-encoded."""

    fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


@dataclass(frozen=True)
class ServerStream:
    """``fn(request message, context)``: an async iterator of response messages, or a
    coroutine that writes them with ``context.write``."""

    fn: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Message]]
    request_type: type[Message]


@dataclass(frozen=True)
class BidiStream:
    """Each request message (bytes) is served on its own, concurrently; answers go out as they complete.

    ``one(raw, context)`` gives the response bytes; when it raises, ``failed(raw, code,
    message)`` gives the response that reports the failure on the stream (the stream itself
    stays open). Each message is a call of its own for the interceptors. At most
    ``max_in_flight`` messages per stream are served at once (None: no bound): past it the
    stream stops reading, so HTTP/2 flow control holds the client back. When the client
    ends the stream, it ends once every message taken is answered.

    ``per_stream(context)``, when given, is called once as a stream opens and returns the
    function that serves that stream's messages (``serve(raw)``), in place of ``one``: what
    every message of a stream shares (its call metadata, say) is then read once, not per
    message.
    """

    one: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]] | None
    failed: Callable[[bytes, grpc.StatusCode, str], bytes]
    max_in_flight: int | None = None
    per_stream: Callable[[grpc.aio.ServicerContext], Callable[[bytes], Awaitable[bytes]]] | None = None

    def __post_init__(self) -> None:
        if (self.one is None) == (self.per_stream is None):
            raise ValueError("BidiStream takes one of one and per_stream")


MethodSpec = Unary | Raw | ServerStream | BidiStream


def generated_methods(service: Any, servicer: object) -> dict[str, MethodSpec]:
    """Unary and server-streaming specs for each method of a generated service's descriptor
    that ``servicer`` implements under the method's own name (``servicer.ModelReady``)."""
    specs: dict[str, MethodSpec] = {}
    for method in service.methods:
        fn = getattr(servicer, method.name, None)
        if fn is None or method.client_streaming:
            continue
        request_type = GetMessageClass(method.input_type)
        specs[method.name] = (ServerStream if method.server_streaming else Unary)(fn, request_type)
    return specs


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Edge:
    """One service's gRPC edge: builds its handlers and runs its interceptor chain."""

    def __init__(self, service: str, interceptors: Sequence[Interceptor] = ()) -> None:
        self.service = service
        self._chain: list[Interceptor] = [RpcMetrics(service), *interceptors]
        self._reversed = self._chain[::-1]
        #: Reader tasks of the open bidirectional streams (end_streams stops them).
        self._stream_readers: set[asyncio.Task] = set()

    def add(self, interceptor: Interceptor) -> None:
        """Append an interceptor to the chain (before the server starts)."""
        self._chain.append(interceptor)
        self._reversed = self._chain[::-1]

    def handler(self, service_name: str, methods: Mapping[str, MethodSpec]) -> grpc.GenericRpcHandler:
        handlers = {name: self._method_handler(name, spec) for name, spec in methods.items()}
        return grpc.method_handlers_generic_handler(service_name, handlers)

    def end_streams(self) -> None:
        """Stop reading every open bidirectional stream; each ends once what it took is answered."""
        for reader in list(self._stream_readers):
            reader.cancel()

    # -- the wrappers ------------------------------------------------------------------

    def _method_handler(self, method: str, spec: MethodSpec) -> grpc.RpcMethodHandler:
        if isinstance(spec, Raw):
            fn = spec.fn

            async def raw(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await self._serve(method, fn, request, context)

            return grpc.unary_unary_rpc_method_handler(raw)
        if isinstance(spec, Unary):
            parsed = _parsing(spec.fn, spec.request_type)

            async def unary(request: bytes, context: grpc.aio.ServicerContext) -> Message:
                return await self._serve(method, parsed, request, context)

            return grpc.unary_unary_rpc_method_handler(unary, response_serializer=_serialize)
        if isinstance(spec, ServerStream):
            return grpc.unary_stream_rpc_method_handler(
                self._server_stream(method, spec), response_serializer=_serialize
            )
        return grpc.stream_stream_rpc_method_handler(self._bidi(method, spec))

    async def _serve(self, method: str, fn: Callable, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Run ``fn(request, context)`` as one call: interceptors around it, errors to statuses."""
        call = RpcCall(self.service, method, context)
        CURRENT.set(call)
        for interceptor in self._chain:
            interceptor.begin(call)
        try:
            return await fn(request, context)
        except ShunterError as exc:
            call.code = exc.code
            await context.abort(exc.code, exc.message, exc.trailing_metadata)
        except grpc.aio.AbortError:
            call.code = code_of(context)
            raise
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            call.code = grpc.StatusCode.INTERNAL
            logger.exception("%s %s failed", self.service, method)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        finally:
            self._end(call)
        raise AssertionError("unreachable")  # context.abort always raises

    def _end(self, call: RpcCall) -> None:
        call.seconds = time.perf_counter() - call.started
        for interceptor in self._reversed:
            interceptor.end(call)

    def _server_stream(self, method: str, spec: ServerStream) -> Callable:
        fn, request_type = spec.fn, spec.request_type

        async def body(request: bytes, context: grpc.aio.ServicerContext) -> None:
            # Written with context.write, so ``fn`` may be an async generator or a coroutine
            # that writes itself.
            result = fn(parse(request_type, request), context)
            if inspect.isasyncgen(result):
                async for message in result:
                    await context.write(message)
            else:
                await cast(Awaitable[Any], result)

        async def stream(request: bytes, context: grpc.aio.ServicerContext) -> None:
            await self._serve(method, body, request, context)

        return stream

    def _bidi(self, method: str, spec: BidiStream) -> Callable:
        failed, bound, per_stream, one = spec.failed, spec.max_in_flight, spec.per_stream, spec.one

        async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            if per_stream is not None:
                serve = per_stream(context)
            else:
                assert one is not None

                def serve(raw: bytes) -> Awaitable[bytes]:
                    return one(raw, context)

            state = _BidiState(bound)
            loop = asyncio.get_running_loop()

            async def serve_one(raw: bytes) -> None:
                # A task of its own (it waits on a worker or a batch while others are read),
                # so CURRENT here is this message's call.
                call = RpcCall(self.service, method, context)
                CURRENT.set(call)
                for interceptor in self._chain:
                    interceptor.begin(call)
                try:
                    state.answer(await serve(raw))
                except asyncio.CancelledError:
                    call.code = grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    call.code, message = status_of(exc)
                    if not isinstance(exc, ShunterError):
                        logger.exception("%s %s message failed", self.service, method)
                    state.answer(failed(raw, call.code, message))
                finally:
                    state.done_one()
                    self._end(call)

            async def read_all() -> None:
                tasks = state.tasks
                try:
                    async for raw in requests:
                        if state.full():
                            # Read no further until a message is answered: the client's
                            # writes then wait on HTTP/2 flow control.
                            await state.room()
                        state.in_flight += 1
                        task = loop.create_task(serve_one(raw))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                finally:
                    # Also on end_streams(): what was taken is answered before the stream ends.
                    while tasks:
                        await asyncio.wait(set(tasks))
                    state.answer(None)

            reader = loop.create_task(read_all())
            self._stream_readers.add(reader)
            try:
                out = state.out
                while True:
                    while out:
                        message = out.popleft()
                        if message is None:
                            return
                        yield message
                    await state.more()
            finally:
                self._stream_readers.discard(reader)
                reader.cancel()
                for task in list(state.tasks):
                    task.cancel()

        return stream


class _BidiState:
    """One bidirectional stream's answers waiting to go out, and its messages in flight.

    A deque and one waiter each way instead of an asyncio.Queue and Semaphore: only the
    stream's own writer waits for answers and only its reader waits for room.
    """

    __slots__ = ("_more", "_room", "bound", "in_flight", "out", "tasks")

    def __init__(self, bound: int | None) -> None:
        self.bound = bound
        self.in_flight = 0
        #: Answers in order of completion; None ends the stream.
        self.out: deque[bytes | None] = deque()
        self.tasks: set[asyncio.Task] = set()
        self._more: asyncio.Future | None = None
        self._room: asyncio.Future | None = None

    def answer(self, message: bytes | None) -> None:
        self.out.append(message)
        more = self._more
        if more is not None and not more.done():
            more.set_result(None)

    def more(self) -> asyncio.Future:
        """A future done once an answer is added."""
        self._more = asyncio.get_running_loop().create_future()
        return self._more

    def full(self) -> bool:
        return self.bound is not None and self.in_flight >= self.bound

    def done_one(self) -> None:
        self.in_flight -= 1
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    async def room(self) -> None:
        while self.full():
            self._room = asyncio.get_running_loop().create_future()
            await self._room


def _parsing(fn: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]], request_type: type[Message]) -> Any:
    async def parsed(request: bytes, context: grpc.aio.ServicerContext) -> Message:
        return await fn(parse(request_type, request), context)

    return parsed
