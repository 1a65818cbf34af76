"""Calls from the router to workers: raw-bytes ModelInfer with one retry elsewhere.

The request is forwarded as the bytes the client sent (plus an appended model_version
when the split chose one) and the worker's response bytes come back untouched; with
``None`` serialisers gRPC passes bytes straight through.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc

from services.common.errors import DeadlineExceeded, ShunterError, Unavailable
from services.gen.inference import grpc_service_pb2 as pb
from services.router import metrics
from services.router.balancer import Balancer, Replica

_SERVICE = "/inference.GRPCInferenceService/"


class UpstreamError(ShunterError):
    """A worker's own status (e.g. DEADLINE_EXCEEDED, INTERNAL), passed on to the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkerTransport:
    """One channel to one worker and the calls the router makes on it."""

    def __init__(self, address: str, max_message_bytes: int) -> None:
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # The router retries itself (once, on another worker); no hidden retries.
                ("grpc.enable_retries", 0),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
            ],
        )
        self.infer = self.channel.unary_unary(_SERVICE + "ModelInfer")
        self.statistics = self.channel.unary_unary(
            _SERVICE + "ModelStatistics",
            request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString,
        )

    async def close(self, grace_s: float | None = None) -> None:
        await self.channel.close(grace_s)


async def forward_infer(
    balancer: Balancer,
    addresses: Sequence[str],
    raw: bytes,
    deadline: float,
    metadata: tuple[tuple[str, str], ...] | None,
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
            response = await current.transport.infer(raw, timeout=remaining, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code != grpc.StatusCode.UNAVAILABLE:
                raise UpstreamError(code, err.details() or code.name) from None
            balancer.failed(current)
            other = None if retried else balancer.pick(addresses, exclude=current)
            if other is None:
                raise UpstreamError(code, err.details() or "worker unavailable") from None
            metrics.RETRIES.inc()
            replica, retried = other, True
            continue
        finally:
            current.outstanding -= 1
        balancer.succeeded(current)
        return response
