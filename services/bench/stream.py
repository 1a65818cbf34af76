"""``--stream``: calls multiplexed over one ModelStreamInfer call per connection.

This is how tritonclient's ``start_stream`` / ``async_stream_infer`` and ghz's streaming
mode drive a server: one long-lived bidirectional call, each request one message, each
answer one message carrying the request's ``id``. A caller here appends a fresh id to
the pre-serialised request (protobuf keeps the last value of a repeated scalar field, so
the bytes need no re-encoding), queues it for the stream's one writer (gRPC allows one
write in flight per call) and waits for the answer with that id.

Per-request statuses ride on the stream as the Open Inference Protocol has them: an
answer with ``error_message`` set failed; its code is ``parameters["shunter_status_code"]``
when the server gives one (Shunter's router and worker do), else UNKNOWN. A request
whose answer does not come back within the call timeout counts as DEADLINE_EXCEEDED; if
the stream itself fails, every request waiting on it gets the stream's status and the
next request opens a new stream.

The call timeout is each request's own, never the stream's: the stream call has no
deadline, and every message carries Triton's ``timeout`` parameter (µs), which Shunter's
router and worker (and Triton) take as that request's deadline. So the server drops a
request the client has given up on, as it does a unary call past its gRPC deadline,
instead of computing answers nobody waits for while fresh requests queue behind them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import deque

import grpc

from services.common import wire
from services.common.inference_parameters import STATUS_CODE, TIMEOUT
from services.gen.inference import grpc_service_pb2 as pb

MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def with_id(payload: bytes, request_id: str) -> bytes:
    """``payload`` (a serialised ModelInferRequest) with its id set to ``request_id``."""
    return wire.with_id(payload, request_id)


@functools.lru_cache(maxsize=8)
def timeout_field(timeout_s: float) -> bytes:
    """The encoded ``parameters["timeout"]`` entry for a per-request limit of ``timeout_s``.

    Appended to a serialised request it overrides any ``timeout`` the request had; at
    least 1 µs, since 0 or less means "no limit" to the server.
    """
    return wire.int64_parameter_field(TIMEOUT, max(1, round(timeout_s * 1_000_000)))


def status_of(response: pb.ModelStreamInferResponse) -> str:
    """The status name of one stream answer: OK, or the code the server put on the failure."""
    if not response.error_message:
        return "OK"
    parameters = response.infer_response.parameters
    if STATUS_CODE in parameters:
        return _CODE_NAMES.get(parameters[STATUS_CODE].int64_param, "UNKNOWN")
    return "UNKNOWN"


class StreamCaller:
    """Requests over one ModelStreamInfer call on ``channel``, matched to answers by id."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None, tag: str) -> None:
        self._open = channel.stream_stream(MODEL_STREAM_INFER, request_serializer=None, response_deserializer=None)
        self._metadata = metadata
        self._tag = tag
        self._ids = itertools.count()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._pending: dict[str, asyncio.Future[tuple[str, pb.ModelInferResponse | None]]] = {}
        self._outbox: deque[bytes] = deque()
        self._wake: asyncio.Event = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def _ensure_open(self) -> None:
        if self._call is not None:
            return
        call = self._call = self._open(metadata=self._metadata)
        self._tasks = [asyncio.create_task(self._write_all(call)), asyncio.create_task(self._read_all(call))]

    async def infer(self, payload: bytes, timeout_s: float) -> str:
        """Send one request; return its status name once its answer (or a failure) comes back."""
        status, _response = await self.infer_response(payload, timeout_s)
        return status

    async def infer_response(self, payload: bytes, timeout_s: float) -> tuple[str, pb.ModelInferResponse | None]:
        """Send one request; return its status name and the answer (None when none came back)."""
        self._ensure_open()
        request_id = f"{self._tag}-{next(self._ids)}"
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._outbox.append(with_id(payload + timeout_field(timeout_s), request_id))
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return "DEADLINE_EXCEEDED", None
        finally:
            self._pending.pop(request_id, None)

    async def _write_all(self, call: grpc.aio.StreamStreamCall) -> None:
        outbox = self._outbox
        try:
            while True:
                while outbox:
                    await call.write(outbox.popleft())
                self._wake.clear()
                await self._wake.wait()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return  # the reader sees the stream's status and fails what is pending

    async def _read_all(self, call: grpc.aio.StreamStreamCall) -> None:
        code = "UNAVAILABLE"
        try:
            async for message in call:
                response = pb.ModelStreamInferResponse.FromString(message)
                future = self._pending.get(response.infer_response.id)
                if future is not None and not future.done():
                    future.set_result((status_of(response), response.infer_response))
            code = "UNAVAILABLE"  # the server ended the stream while requests were pending
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        finally:
            self._broken(call, code)

    def _broken(self, call: grpc.aio.StreamStreamCall, code: str) -> None:
        """Fail every request waiting on ``call``; the next request opens a new stream."""
        if self._call is not call:
            return  # closed, or already replaced: nothing waiting belongs to it
        self._call = None
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._outbox.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_result((code, None))

    async def close(self) -> None:
        call, self._call = self._call, None
        for task in self._tasks:
            task.cancel()
        if call is not None:
            call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
