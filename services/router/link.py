"""Many ModelInfer requests to one worker over one ModelStreamInfer stream.

A unary call per request costs the router about 0.15 ms of CPU (a new HTTP/2 stream,
metadata both ways, six batch operations) and the worker as much again. On a stream
each request is one message each way. This is still the Open Inference Protocol: the
worker's ModelStreamInfer serves any client, and tritonclient's streaming works against it.

Matching and errors ride in fields the protocol already has:

- each message's ``id`` is overridden with a link-local number (appended on the wire,
  see wire.py) and the caller's own id is put back on the response;
- the time the caller has left travels as Triton's ``timeout`` request parameter (µs),
  so the worker drops a request whose deadline passed before computing it;
- a failed request comes back as ``error_message`` plus an ``infer_response`` with the
  id and the gRPC code in ``parameters["shunter_status_code"]``, so the router passes
  on the worker's own status exactly as a unary call would.

If the stream breaks (worker gone, connection reset) every request waiting on it fails
as UNAVAILABLE, which forward_infer retries on another worker; the next request opens a
fresh stream.

A worker that stops without closing its connection (SIGSTOP, a wedged event loop, a
host that froze) breaks nothing: the kernel keeps the connection open, and HTTP/2
keepalive takes 15 s to notice, longer than most deadlines. So the link checks liveness
itself (``Liveness``): while requests are pending and nothing has come back for
``interval_s``, it sends a ping — a ModelInferRequest that names no model and carries
``parameters["shunter_ping"]``, which a worker answers at once without queueing (an
older worker answers it NOT_FOUND, which proves liveness just as well) — and when no
message at all arrives within ``timeout_s`` of the ping, the stream breaks with every
pending request failing UNAVAILABLE marked ``hung``: forward_infer retries each on
another worker and ejects this one at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from dataclasses import dataclass

import grpc

from services.common import inference_parameters
from services.gen.inference import grpc_service_pb2 as pb
from services.router import metrics, wire
from services.router.errors import UpstreamError

logger = logging.getLogger(__name__)


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
        self.pending: dict[str, tuple[asyncio.Future, str]] = {}
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
        if self.broken is not None or liveness is None or not self.pending:
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
            self._break(err.code(), err.details() or "stream to worker failed")
        except Exception as exc:  # e.g. InvalidStateError once the call ended
            self._break(grpc.StatusCode.UNAVAILABLE, f"stream to worker failed: {exc}")

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
                future, caller_id = waiter
                if future.done():
                    continue
                if error is None:
                    future.set_result(wire.replace_id(infer_response, start, stop, caller_id))
                else:
                    future.set_exception(UpstreamError(inference_parameters.status_of_failed(infer_response), error))
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
        for future, _ in self.pending.values():
            if not future.done():
                # One exception object each: a shared one would collect every waiter's traceback.
                future.set_exception(UpstreamError(code, details, hung))
        self.pending.clear()
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

    def _current(self) -> _Stream:
        stream = self._stream
        if stream is None:
            stream = self._stream = _Stream(self._open(), self._forget, self._liveness)
        return stream

    def _forget(self, stream: _Stream) -> None:
        if self._stream is stream:
            self._stream = None

    async def infer(self, raw: bytes, timeout_s: float, caller_id: str, timeout_us: int | None = None) -> bytes:
        """The worker's serialised ModelInferResponse for ``raw``, with the caller's id.

        Raises UpstreamError with the worker's status, DEADLINE_EXCEEDED when
        ``timeout_s`` passes first, or UNAVAILABLE when the stream breaks.
        """
        stream = self._current()
        link_id = str(next(self._ids))
        budget_us = int(timeout_s * 1_000_000)
        if timeout_us is not None:
            budget_us = min(budget_us, timeout_us)
        # One copy of the request: its bytes, then the fields that override its id and timeout.
        message = b"".join(
            (raw, wire.id_field(link_id), wire.int64_parameter_field(inference_parameters.TIMEOUT, max(budget_us, 1)))
        )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        stream.pending[link_id] = (future, caller_id)
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
        waiting = [future for future, _ in stream.pending.values()]
        if grace_s and waiting:
            await asyncio.wait(waiting, timeout=grace_s)
        await stream.close()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
