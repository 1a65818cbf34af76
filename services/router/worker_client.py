"""The router's client of its workers: one request forwarded, read top to bottom.

A request leaves ``Router.infer`` as one ``Forward`` record (the bytes to send, the
deadline, trace context, the caller's id and ``timeout`` parameter) and comes back as the
worker's response bytes, or an ``UpstreamError`` carrying the worker's own status:

1. ``forward_infer`` picks the cheaper of two workers (balancer.py), retries once on
   another worker on UNAVAILABLE, and hedges idempotent models (``--hedge-model``).
2. ``WorkerTransport`` holds one channel per worker and chooses the link: ``stream`` (the
   default) multiplexes requests over one ModelStreamInfer call (``StreamLink``);
   ``unary`` makes one ModelInfer call each. The router carries trace context in the
   request's parameters (services/common/tracing.py), so a traced request keeps the
   stream; one with ``Forward.trace`` metadata goes unary, since per-request metadata
   exists only on a call of its own, and so does one within a few bytes of the message limit.
3. ``StreamLink``: a unary call per request costs the router about 0.15 ms of CPU (a new
   HTTP/2 stream, metadata both ways, six batch operations) and the worker as much again;
   on a stream each request is one message each way. It is still the Open Inference
   Protocol (any client may use a worker's ModelStreamInfer so), and matching and errors
   ride in fields the protocol already has:

   - each message's ``id`` is overridden with a link-local number (appended on the wire,
     see wire.py) and the caller's own id is put back on the response in one
     slice-and-join, the response's only copy in the router;
   - the time the caller has left travels as Triton's ``timeout`` request parameter (µs),
     so the worker drops a request whose deadline passed before computing it;
   - a failed request comes back as ``error_message`` plus an ``infer_response`` with the
     id and the gRPC code in ``parameters["shunter_status_code"]``, so the router passes
     on the worker's own status exactly as a unary call would.

   If the stream breaks (worker gone, connection reset) every request waiting on it fails
   as UNAVAILABLE, which forward_infer retries on another worker; the next request opens a
   fresh stream. A worker that stops without closing its connection (SIGSTOP, a wedged
   event loop, a frozen host) breaks nothing, and HTTP/2 keepalive takes 15 s to notice,
   longer than most deadlines, so the link checks liveness itself (``Liveness``): while
   requests are pending and nothing has come back for ``interval_s``, it sends a ping — a
   ModelInferRequest naming no model, with ``parameters["shunter_ping"]``, which a worker
   answers at once without queueing (an older worker answers NOT_FOUND, which proves
   liveness as well) — and when no message at all arrives within ``timeout_s`` of it, the
   stream breaks with every pending request failing UNAVAILABLE marked ``hung``:
   forward_infer retries each on another worker and ejects this one at once. Unary calls to
   the same worker (one near the message limit, or given call metadata) are watched by the
   same pings and cut the same way.

Request bytes are the caller's own plus appended fields (the version the split chose, the
link's id and timeout): with ``None`` serialisers gRPC passes bytes straight through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from services.common import inference_parameters, wire
from services.common.admission import Overloaded, is_overload
from services.common.errors import DeadlineExceeded, ShunterError, Unavailable
from services.common.tls import ClientTls
from services.common.tls import channel as tls_channel
from services.gen.inference import grpc_service_pb2 as pb
from services.router import metrics
from services.router.balancer import Balancer, Replica
from services.router.settings import WORKER_LINKS

__all__ = ["Forward", "Liveness", "StreamLink", "UpstreamError", "WorkerTransport", "forward_infer"]

logger = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Forward:
    """One request on its way to a worker: everything the hop needs, in one place."""

    #: The caller's ModelInferRequest, as it came.
    raw: bytes
    #: When the caller stops waiting, on the ``time.monotonic`` clock.
    deadline: float
    #: Call metadata to pass on (None: none). Set, the request goes unary; the router itself
    #: sends trace context in the request's parameters instead (tracing.outgoing).
    trace: Metadata | None = None
    #: The caller's own request id (the stream link puts it back on the response).
    caller_id: str = ""
    #: The caller's Triton ``timeout`` parameter in µs, if it set one.
    caller_timeout_us: int | None = None
    #: Encoded fields that override the caller's (the version the split chose, trace
    #: context), appended to ``raw`` as it goes out: one copy of the request in all.
    overrides: bytes = b""
    #: The caller reads a ModelInferStream: the response comes back wrapped as a
    #: ModelStreamInferResponse, built in the same copy that puts the caller's id back.
    stream_response: bool = False

    def to(self, overrides: bytes, deadline: float) -> Forward:
        """The same request with other overrides and deadline, answered bare (a shadow copy)."""
        return dataclasses.replace(self, overrides=overrides, deadline=deadline, stream_response=False)


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


# -- 1. forward: pick, retry, hedge ---------------------------------------------------


async def forward_infer(
    balancer: Balancer, addresses: Sequence[str], forward: Forward, hedge_after_s: float | None = None
) -> bytes:
    """Send ``forward`` to the cheaper of two workers; once more elsewhere on UNAVAILABLE.

    Each attempt gets what is left of ``forward.deadline``.
    A worker's admission refusal is retried elsewhere like any UNAVAILABLE but never counts
    against the worker; one that missed a liveness ping is ejected at once. When every
    worker is at the router's per-worker cap (set, or learned from its refusals) the request
    is refused at once (Overloaded).

    ``hedge_after_s`` (idempotent models only, ``--hedge-model``): when the first attempt
    has not answered after that long, a second goes to another worker; the first answer
    wins and the other is cancelled.
    """
    replica: Replica | None = balancer.pick(addresses)
    if replica is None:
        if balancer.at_capacity(addresses):
            metrics.WORKERS_AT_CAP.inc()
            raise Overloaded(balancer.full_reason(addresses))
        raise Unavailable("no ready worker")
    attempt = _attempts(balancer, addresses, replica, forward)
    if hedge_after_s is None or len(addresses) < 2:
        return await attempt
    return await _hedged(balancer, addresses, replica, attempt, hedge_after_s,
                         lambda other: _attempts(balancer, addresses, other, forward))


async def _hedged(balancer: Balancer, addresses: Sequence[str], replica: Replica, attempt, hedge_after_s: float,
                  again) -> bytes:
    """``attempt`` (on ``replica``), and ``again(other)`` once it is ``hedge_after_s`` late."""
    tasks = [asyncio.ensure_future(attempt)]
    try:
        done, _ = await asyncio.wait(tasks, timeout=hedge_after_s)
        if done:
            return tasks[0].result()
        other = balancer.pick(addresses, exclude=replica)
        if other is None:
            return await tasks[0]
        metrics.HEDGES.inc()
        tasks.append(asyncio.ensure_future(again(other)))
        pending = set(tasks)
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    return task.result()
                error = error or task.exception()
        assert error is not None
        raise error
    finally:
        # Also when the caller gives up: no attempt outlives the request.
        for task in tasks:
            if not task.done():
                task.cancel()


async def _attempts(balancer: Balancer, addresses: Sequence[str], replica: Replica, forward: Forward) -> bytes:
    """``forward`` to ``replica``, and once to another worker on UNAVAILABLE."""
    retried = False
    while True:
        start = time.monotonic()
        remaining = forward.deadline - start
        if remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the request reached a worker")
        current = replica
        current.outstanding += 1
        try:
            response = await current.transport.infer(forward, remaining)
        except UpstreamError as err:
            if err.code != grpc.StatusCode.UNAVAILABLE:
                # The worker's own answer (or its deadline): a latency sample like any response.
                balancer.observe(current, time.monotonic() - start, addresses)
                raise
            if err.overloaded:
                metrics.WORKER_REFUSALS.inc()
                balancer.refused(current, err.message)
            else:
                balancer.failed(current, hung=err.hung)
            other = None if retried else balancer.pick(addresses, exclude=current)
            if other is None:
                raise
            metrics.RETRIES.inc()
            replica, retried = other, True
            continue
        finally:
            current.outstanding -= 1
        balancer.succeeded(current)
        balancer.observe(current, time.monotonic() - start, addresses)
        return response


# -- 2. the transport: one channel per worker, the link for each request --------------

_SERVICE = "/inference.GRPCInferenceService/"
#: Most bytes the stream link appends to a request (its id and timeout fields). A request
#: within this of the message limit goes unary: on the stream, a message over the
#: worker's limit would end the stream for every request on it.
LINK_OVERHEAD_BYTES = 64


class WorkerTransport:
    """One channel to one worker and the calls the router makes on it."""

    def __init__(
        self,
        address: str,
        max_message_bytes: int,
        link: str = "stream",
        liveness: Liveness | None = None,
        *,
        tls: ClientTls | None = None,
        key: str = "",
    ) -> None:
        if link not in WORKER_LINKS:
            raise ValueError(f"unknown worker link {link!r}; expected one of {', '.join(WORKER_LINKS)}")
        # TLS when configured; the router's key rides on every call (workers check it).
        self.channel = tls_channel(
            address,
            tls=tls,
            token=key,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # The router retries itself (once, on another worker); no hidden retries.
                ("grpc.enable_retries", 0),
                # Pings find a dead worker while the stream link waits; workers accept one
                # every 5 s (server.MIN_CLIENT_PING_INTERVAL_MS), with or without data.
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        self._stream_limit = max_message_bytes - LINK_OVERHEAD_BYTES
        self._unary = self.channel.unary_unary(_SERVICE + "ModelInfer")
        self._stream = StreamLink(self.channel, liveness) if link == "stream" else None
        self.statistics = self.channel.unary_unary(
            _SERVICE + "ModelStatistics",
            request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString,
        )

    async def infer(self, forward: Forward, timeout_s: float) -> bytes:
        """The worker's serialised response within ``timeout_s``; UpstreamError carries its status."""
        size = len(forward.raw) + len(forward.overrides)
        if self._stream is not None and forward.trace is None and size <= self._stream_limit:
            return await self._stream.infer(forward, timeout_s)
        if self._stream is not None:
            self._stream.check_alive()
        response = await self._infer_unary(forward, timeout_s)
        # The response's one copy on this path (a unary worker answers with the caller's id).
        return wire.stream_response(response) if forward.stream_response else response

    async def _infer_unary(self, forward: Forward, timeout_s: float) -> bytes:
        call = self._unary(forward.raw + forward.overrides, timeout=timeout_s, metadata=forward.trace)
        # On the stream link's worker, the stream's liveness pings watch unary calls too.
        watched = self._stream.watch(call) if self._stream is not None else None
        try:
            return await call
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            cut = StreamLink.unwatch(watched, call) if watched is not None else None
            watched = None
            if cut is not None:
                raise cut from None
            if isinstance(exc, asyncio.CancelledError):
                raise
            code = exc.code()
            raise UpstreamError(code, exc.details() or code.name) from None
        finally:
            if watched is not None:
                StreamLink.unwatch(watched, call)

    async def close(self, grace_s: float | None = None) -> None:
        if self._stream is not None:
            await self._stream.close(grace_s)
        await self.channel.close(grace_s)


# -- 3. the stream link -------------------------------------------------------------


#: After a failed write, how long the stream waits for the reader to report the call's status.
WRITE_FAILED_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class Liveness:
    """When the stream link pings a quiet worker, and how long it waits for any answer."""

    #: Requests pending and nothing read for this long: send a ping (seconds).
    interval_s: float = 1.0
    #: No message at all this long after the ping: the worker is hung (seconds).
    timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.timeout_s <= 0:
            raise ValueError(f"liveness interval and timeout must be positive, got {self.interval_s}, {self.timeout_s}")


def ping_message(number: int) -> bytes:
    """A liveness ping: no model, ``shunter_ping`` set, an id no request uses."""
    request = pb.ModelInferRequest(id=f"ping-{number}")
    request.parameters[inference_parameters.PING].bool_param = True
    return request.SerializeToString()


class _Stream:
    """One open ModelStreamInfer call: a writer draining the outbox, a reader resolving futures."""

    def __init__(self, call: grpc.aio.StreamStreamCall, on_closed, liveness: Liveness | None = None) -> None:
        self.call = call
        #: By link id: the caller's future, id, and whether it wants a stream response.
        self.pending: dict[str, tuple[asyncio.Future, str, bool]] = {}
        #: Unary calls to the same worker watched by this stream's liveness pings (near the
        #: message limit, or with call metadata), and those a missed ping cut.
        self.held: set[grpc.aio.UnaryUnaryCall] = set()
        self.cut: set[grpc.aio.UnaryUnaryCall] = set()
        self.outbox: deque[bytes] = deque()
        self.broken: UpstreamError | None = None
        self._wakeup: asyncio.Future | None = None
        self._on_closed = on_closed
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._liveness = liveness
        #: loop.time() of the last message read (or of the stream's opening).
        self.last_read = loop.time()
        #: loop.time() of the unanswered ping, if one is out.
        self._ping_sent: float | None = None
        self._pings = itertools.count()
        self._watch: asyncio.TimerHandle | None = None
        self._writer = loop.create_task(self._write_all())
        self._reader = loop.create_task(self._read_all())

    def send(self, message: bytes) -> None:
        self._enqueue(message)
        self._watch_liveness()

    def hold(self, call: grpc.aio.UnaryUnaryCall) -> None:
        """Watch a unary call to the same worker: a missed ping cancels it too (see ``cut``)."""
        self.held.add(call)
        self._watch_liveness()

    def _watch_liveness(self) -> None:
        if self._watch is None and self._liveness is not None:
            self._watch = self._loop.call_later(self._liveness.interval_s, self._check_liveness)

    def _enqueue(self, message: bytes) -> None:
        self.outbox.append(message)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _check_liveness(self) -> None:
        """While requests are pending: ping a quiet worker, break the stream if it stays silent."""
        self._watch = None
        liveness = self._liveness
        if self.broken is not None or liveness is None or not (self.pending or self.held):
            self._ping_sent = None
            return
        now = self._loop.time()
        sent = self._ping_sent
        if sent is not None:
            if now - sent >= liveness.timeout_s:
                metrics.LIVENESS_FAILURES.inc()
                self._break(
                    grpc.StatusCode.UNAVAILABLE,
                    f"worker did not answer a liveness ping within {liveness.timeout_s * 1000:.0f} ms",
                    hung=True,
                )
                return
            due = sent + liveness.timeout_s
        elif now - self.last_read >= liveness.interval_s:
            self._ping_sent = now
            self._enqueue(ping_message(next(self._pings)))
            due = now + liveness.timeout_s
        else:
            due = self.last_read + liveness.interval_s
        self._watch = self._loop.call_later(max(due - now, 0.01), self._check_liveness)

    async def _write_all(self) -> None:
        outbox = self.outbox
        try:
            while True:
                while outbox:
                    await self.call.write(outbox.popleft())
                self._wakeup = self._loop.create_future()
                await self._wakeup
                self._wakeup = None
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as err:
            await self._write_failed(err.code(), err.details() or "stream to worker failed")
        except Exception as exc:  # e.g. InvalidStateError once the call ended
            await self._write_failed(grpc.StatusCode.UNAVAILABLE, f"stream to worker failed: {exc}")

    async def _write_failed(self, code: grpc.StatusCode, details: str) -> None:
        """A write fails once the call has ended: the reader then reports the call's own status
        (the worker's UNAUTHENTICATED, say, not core's "Internal error"), so give it a moment."""
        await asyncio.wait((self._reader,), timeout=WRITE_FAILED_WAIT_S)
        self._break(code, details)  # nothing, if the reader broke the stream first

    async def _read_all(self) -> None:
        pending = self.pending
        try:
            while True:
                message = await self.call.read()
                self.last_read = self._loop.time()
                self._ping_sent = None
                if message is grpc.aio.EOF:
                    self._break(grpc.StatusCode.UNAVAILABLE, "worker closed the stream")
                    return
                error, infer_response = wire.split_stream_response(message)
                link_id, start, stop = wire.find_id(infer_response)
                waiter = pending.pop(link_id, None)
                if waiter is None:
                    continue  # its caller gave up (deadline or cancellation)
                future, caller_id, wrap = waiter
                if future.done():
                    continue
                if error is None:
                    # The response's one copy in the router: a slice-and-join that puts the
                    # caller's id back (and the stream wrapper around it for a stream caller).
                    future.set_result(wire.replace_id(infer_response, start, stop, caller_id, wrap=wrap))
                else:
                    code = inference_parameters.status_of_failed(bytes(infer_response))
                    future.set_exception(UpstreamError(code, error))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as err:
            code = err.code()
            # A broken stream is a broken connection: retryable, whatever core calls it.
            if code not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                logger.warning("stream to worker ended: %s %s", code.name, err.details())
            self._break(grpc.StatusCode.UNAVAILABLE, err.details() or "stream to worker failed")
        except wire.WireError as exc:
            logger.error("worker sent a malformed stream response: %s", exc)
            self._break(grpc.StatusCode.UNAVAILABLE, f"malformed response from worker: {exc}")

    def _break(self, code: grpc.StatusCode, details: str, hung: bool = False) -> None:
        """Fail everything waiting here; later requests open a new stream."""
        if self.broken is not None:
            return
        if code != grpc.StatusCode.UNAVAILABLE:
            code, details = grpc.StatusCode.UNAVAILABLE, f"stream to worker failed: {code.name} {details}"
        self.broken = UpstreamError(code, details, hung)
        self._on_closed(self)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for future, _, _ in self.pending.values():
            if not future.done():
                # One exception object each: a shared one would collect every waiter's traceback.
                future.set_exception(UpstreamError(code, details, hung))
        self.pending.clear()
        if hung:
            # A hung worker will not answer its unary calls either (a worker that merely
            # closed the stream, draining, still may).
            self.cut = set(self.held)
            for call in self.cut:
                call.cancel()
        self.outbox.clear()
        for task in (self._writer, self._reader):
            if task is not asyncio.current_task():
                task.cancel()
        self.call.cancel()

    async def close(self) -> None:
        self._break(grpc.StatusCode.UNAVAILABLE, "router closed the stream")
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)


class StreamLink:
    """Requests to one worker, multiplexed over a ModelStreamInfer call opened on demand."""

    def __init__(self, channel: grpc.aio.Channel, liveness: Liveness | None = None) -> None:
        self._open = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        self._liveness = liveness
        self._stream: _Stream | None = None
        self._ids = itertools.count()
        self._closing: set[asyncio.Task] = set()
        #: After a missed ping, until when (loop time) requests fail at once instead of
        #: opening a new stream to the hung worker: those that arrive before the balancer
        #: has ejected it would each wait out another ping.
        self._hung_until = 0.0
        self._hung_error: UpstreamError | None = None

    def check_alive(self) -> None:
        """Raise at once (UNAVAILABLE, hung) while the worker is freshly known hung."""
        if self._hung_error is not None:
            if asyncio.get_running_loop().time() < self._hung_until:
                raise UpstreamError(grpc.StatusCode.UNAVAILABLE, self._hung_error.message, hung=True)
            self._hung_error = None

    def _current(self) -> _Stream:
        stream = self._stream
        if stream is None:
            stream = self._stream = _Stream(self._open(), self._forget, self._liveness)
        return stream

    def _forget(self, stream: _Stream) -> None:
        if self._stream is stream:
            self._stream = None
        broken = stream.broken
        if broken is not None and broken.hung and self._liveness is not None:
            self._hung_error = broken
            self._hung_until = asyncio.get_running_loop().time() + self._liveness.timeout_s

    def watch(self, call: grpc.aio.UnaryUnaryCall) -> _Stream:
        """Put a unary call to this worker under the stream's liveness pings; release with ``unwatch``."""
        stream = self._current()
        stream.hold(call)
        return stream

    @staticmethod
    def unwatch(stream: _Stream, call: grpc.aio.UnaryUnaryCall) -> UpstreamError | None:
        """Stop watching ``call``; the error to raise instead if a missed ping cut it."""
        stream.held.discard(call)
        if call in stream.cut:
            stream.cut.discard(call)
            broken = stream.broken
            return UpstreamError(grpc.StatusCode.UNAVAILABLE, broken.message if broken else "worker hung", hung=True)
        return None

    async def infer(self, forward: Forward, timeout_s: float) -> bytes:
        """The worker's serialised ModelInferResponse for ``forward``, with the caller's id.

        Raises UpstreamError with the worker's status, DEADLINE_EXCEEDED when
        ``timeout_s`` passes first, or UNAVAILABLE when the stream breaks.
        """
        self.check_alive()
        stream = self._current()
        link_id = str(next(self._ids))
        budget_us = int(timeout_s * 1_000_000)
        if forward.caller_timeout_us is not None:
            budget_us = min(budget_us, forward.caller_timeout_us)
        # One copy of the request: its bytes, then the fields that override its version, id
        # and timeout.
        message = b"".join((
            forward.raw,
            forward.overrides,
            wire.id_field(link_id),
            wire.int64_parameter_field(inference_parameters.TIMEOUT, max(budget_us, 1)),
        ))
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        stream.pending[link_id] = (future, forward.caller_id, forward.stream_response)
        timer = loop.call_later(timeout_s, _expire, future)
        stream.send(message)
        try:
            return await future
        finally:
            timer.cancel()
            stream.pending.pop(link_id, None)

    async def close(self, grace_s: float | None = None) -> None:
        """Let requests already sent finish (up to ``grace_s``), then end the stream."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        waiting = [future for future, _, _ in stream.pending.values()]
        if grace_s and waiting:
            await asyncio.wait(waiting, timeout=grace_s)
        await stream.close()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
