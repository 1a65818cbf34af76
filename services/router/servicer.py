"""``inference.GRPCInferenceService`` for clients, built on the common gRPC edge.

ModelInfer and ModelStreamInfer take and return raw bytes so a request is parsed once (in
``Router.infer``), forwarded as the caller's bytes, and the worker's response is returned
without re-encoding. The other methods are small and use the generated messages. Statuses,
RPC metrics and interceptors come from ``services.common.edge``; what each method answers
comes from ``Router`` and ``describe``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import grpc

from services.common import edge, inference_parameters, tracing, wire
from services.common.errors import Unavailable
from services.gen.inference import grpc_service_pb2 as pb
from services.router import describe
from services.router.auth import authenticate, authorize
from services.router.core import RETRY_AFTER_TRAILER, InferResult, Router
from services.router.payload_log import PayloadLog
from services.router.table import KeyEntry, VersionEntry

__all__ = ["RETRY_AFTER_TRAILER", "SERVICE_NAME", "VERSION_TRAILER", "RouterServicer"]

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "shunter"
SERVER_VERSION = "0.1.0"
#: Trailing metadata naming the version that served a request.
VERSION_TRAILER = "shunter-model-version"


def _headers(context: grpc.aio.ServicerContext) -> Mapping[str, str]:
    return dict(context.invocation_metadata() or ())


def _log_payload(log: PayloadLog, raw: bytes, result: InferResult) -> None:
    """Offer an answered request to the payload log, timed from when the edge took the call."""
    call = edge.CURRENT.get()
    latency_s = time.perf_counter() - call.started if call is not None else 0.0
    log.offer(result.model, result.version, raw, result.response, latency_s, tracing.current().trace_id())


class RouterServicer:
    def _versions_of(self, model: str) -> Mapping[str, object] | None:
        entry = self.router.snapshot.models.get(model)
        return None if entry is None else entry.versions

    def __init__(self, router: Router) -> None:
        self.router = router
        self.draining = False
        self.edge = edge.Edge("router", tracing.interceptors("router"))
        self.edge.add(router.admission)
        self.edge.add(router.version_stats)

    def handler(self) -> grpc.GenericRpcHandler:
        return self.edge.handler(
            SERVICE_NAME,
            {
                "ModelInfer": edge.Raw(self.model_infer),
                "ModelStreamInfer": edge.BidiStream(
                    None,
                    inference_parameters.failed_stream_response_bytes,
                    self.router.settings.stream_max_in_flight,
                    per_stream=self.stream_messages,
                ),
                "ServerLive": edge.Unary(self.server_live, pb.ServerLiveRequest),
                "ServerReady": edge.Unary(self.server_ready, pb.ServerReadyRequest),
                "ServerMetadata": edge.Unary(self.server_metadata, pb.ServerMetadataRequest),
                "ModelReady": edge.Unary(self.model_ready, pb.ModelReadyRequest),
                "ModelMetadata": edge.Unary(self.model_metadata, pb.ModelMetadataRequest),
                "ModelConfig": edge.Unary(self.model_config, pb.ModelConfigRequest),
                "ModelStatistics": edge.Unary(self.model_statistics, pb.ModelStatisticsRequest),
                "RepositoryIndex": edge.Unary(self.repository_index, pb.RepositoryIndexRequest),
            },
        )

    # -- inference ------------------------------------------------------------------

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if self.draining:
            raise Unavailable("router is shutting down")
        result = await self.router.infer(raw, _headers(context), self.router.deadline(context.time_remaining()))
        context.set_trailing_metadata(((VERSION_TRAILER, result.version),))
        if self.router.payload_log is not None:
            _log_payload(self.router.payload_log, raw, result)
        return result.response

    def stream_messages(self, context: grpc.aio.ServicerContext) -> Callable[[bytes], Awaitable[bytes]]:
        """What serves one ModelStreamInfer call's messages, each routed on its own.

        The call's metadata (the key, a sticky header) is the stream's: read once here, not
        per message. Each response keeps its request's id and goes out as the worker's bytes
        inside their stream wrapper, built in the one copy that puts the id back
        (worker_client.StreamLink); nothing is parsed or re-encoded.
        """
        headers = _headers(context)
        router = self.router

        async def one(raw: bytes) -> bytes:
            if self.draining:
                raise Unavailable("router is shutting down")
            result = await router.infer(raw, headers, router.deadline(context.time_remaining()), stream=True)
            if router.payload_log is not None:
                bare = InferResult(bytes(wire.stream_payload(result.response)), result.model, result.version)
                _log_payload(router.payload_log, raw, bare)
            return result.response

        return one

    # -- server and model information -----------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.router.ready and not self.draining)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["statistics"])

    def _caller(self, context: grpc.aio.ServicerContext, model: str | None = None) -> KeyEntry:
        """The caller's key (UNAUTHENTICATED without one), allowed ``model`` if one is named."""
        key = authenticate(self.router.snapshot, _headers(context).get("authorization"))
        if model is not None:
            authorize(key, model)
        return key

    def _usable(self, entry: VersionEntry) -> bool:
        return bool(self.router.balancer.healthy(entry.workers))

    async def model_ready(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        self._caller(context, request.name)
        model = self.router.snapshot.models.get(request.name)
        edge.label(request.name if model is not None else edge.UNKNOWN_MODEL)
        ready = model is not None and describe.model_ready(model, request.version, self._usable)
        return pb.ModelReadyResponse(ready=ready)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        self._caller(context, request.name)
        return describe.model_metadata(*describe.find(self.router.snapshot, request.name, request.version))

    async def model_config(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        self._caller(context, request.name)
        return describe.model_config(*describe.find(self.router.snapshot, request.name, request.version))

    async def repository_index(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        key = self._caller(context)
        return describe.repository_index(
            self.router.snapshot, lambda name: not key.models or name in key.models, request.ready
        )

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        key = self._caller(context, request.name or None)
        return await self.router.statistics(request, key)
