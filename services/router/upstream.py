"""Calls from the router to workers: raw-bytes inference with one retry elsewhere.

The request is forwarded as the bytes the client sent (plus appended fields: the
model_version the split chose, and on the stream link an id and a timeout) and the
worker's response bytes come back as they are; with ``None`` serialisers gRPC passes
bytes straight through.

Two links to a worker: ``stream`` (the default) multiplexes requests over one
ModelStreamInfer call (link.py); ``unary`` makes one ModelInfer call per request. Trace
context travels in the request's parameters (services.common.tracing), so a traced
request keeps the stream; one within a few bytes of the message limit goes unary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc

from services.common.errors import DeadlineExceeded, Unavailable
from services.gen.inference import grpc_service_pb2 as pb
from services.router import metrics
from services.router.balancer import Balancer, Replica
from services.router.errors import UpstreamError
from services.router.link import StreamLink
from services.router.settings import WORKER_LINKS

__all__ = ["UpstreamError", "WorkerTransport", "forward_infer"]

_SERVICE = "/inference.GRPCInferenceService/"
#: Most bytes the stream link appends to a request (its id and timeout fields). A request
#: within this of the message limit goes unary: on the stream, a message over the
#: worker's limit would end the stream for every request on it.
LINK_OVERHEAD_BYTES = 64


class WorkerTransport:
    """One channel to one worker and the calls the router makes on it."""

    def __init__(self, address: str, max_message_bytes: int, link: str = "stream") -> None:
        if link not in WORKER_LINKS:
            raise ValueError(f"unknown worker link {link!r}; expected one of {', '.join(WORKER_LINKS)}")
        self.channel = grpc.aio.insecure_channel(
            address,
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
        self._stream = StreamLink(self.channel) if link == "stream" else None
        self.statistics = self.channel.unary_unary(
            _SERVICE + "ModelStatistics",
            request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString,
        )

    async def infer(
        self,
        raw: bytes,
        timeout_s: float,
        metadata: tuple[tuple[str, str], ...] | None = None,
        caller_id: str = "",
        timeout_us: int | None = None,
    ) -> bytes:
        """The worker's serialised response; UpstreamError carries the worker's status.

        ``caller_id`` is the request's own id (the stream link rewrites ids on the wire);
        ``timeout_us`` is the caller's ``timeout`` parameter, if it set one.
        """
        if self._stream is not None and metadata is None and len(raw) <= self._stream_limit:
            return await self._stream.infer(raw, timeout_s, caller_id, timeout_us)
        try:
            return await self._unary(raw, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            raise UpstreamError(code, err.details() or code.name) from None

    async def close(self, grace_s: float | None = None) -> None:
        if self._stream is not None:
            await self._stream.close(grace_s)
        await self.channel.close(grace_s)


async def forward_infer(
    balancer: Balancer,
    addresses: Sequence[str],
    raw: bytes,
    deadline: float,
    metadata: tuple[tuple[str, str], ...] | None,
    caller_id: str = "",
    timeout_us: int | None = None,
) -> bytes:
    """Send ``raw`` to the least loaded of two workers; once more elsewhere on UNAVAILABLE.

    ``deadline`` is on the ``time.monotonic`` clock; each attempt gets what is left of it.
    """
    replica: Replica | None = balancer.pick(addresses)
    if replica is None:
        raise Unavailable("no ready worker")
    retried = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the request reached a worker")
        current = replica
        current.outstanding += 1
        try:
            response = await current.transport.infer(raw, remaining, metadata, caller_id, timeout_us)
        except UpstreamError as err:
            if err.code != grpc.StatusCode.UNAVAILABLE:
                raise
            balancer.failed(current)
            other = None if retried else balancer.pick(addresses, exclude=current)
            if other is None:
                raise
            metrics.RETRIES.inc()
            replica, retried = other, True
            continue
        finally:
            current.outstanding -= 1
        balancer.succeeded(current)
        return response
