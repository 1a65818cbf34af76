"""``inference.GRPCInferenceService`` for clients, registered as a generic handler.

ModelInfer and ModelStreamInfer take and return raw bytes (``request_deserializer=None``,
``response_serializer=None``) so a request is parsed once, forwarded as the caller's
bytes, and the worker's response is returned without re-encoding. The other methods are
small and use the generated messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common import inference_parameters
from services.common import metrics as common_metrics
from services.common.errors import ShunterError, Unavailable
from services.common.grpc_errors import status_of
from services.gen.inference import grpc_service_pb2 as pb
from services.router import describe, wire
from services.router.auth import authenticate, authorize
from services.router.core import RateLimited, Router
from services.router.table import VersionEntry

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "shunter"
SERVER_VERSION = "0.1.0"
#: Trailing metadata naming the version that served a request.
VERSION_TRAILER = "shunter-model-version"
#: Trailing metadata on RESOURCE_EXHAUSTED from a rate limit.
RETRY_AFTER_TRAILER = "retry-after-ms"
#: Time allowed for each worker's answer when summing statistics.
STATISTICS_TIMEOUT_S = 5.0


class RouterServicer:
    def _versions_of(self, model: str) -> dict[str, object] | None:
        entry = self.router.snapshot.models.get(model)
        return None if entry is None else entry.versions

    def __init__(self, router: Router) -> None:
        self.router = router
        self.draining = False
        self._observer = common_metrics.RpcObserver("router", common_metrics.known_labels(self._versions_of))
        self._in_flight_infer = common_metrics.IN_FLIGHT.labels("router", "ModelInfer")
        self._in_flight_stream = common_metrics.IN_FLIGHT.labels("router", "ModelStreamInfer")

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable, request_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request_type.FromString, response_serializer=lambda m: m.SerializeToString()
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
                "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
                "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
                "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
                "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
                "ModelConfig": unary(self.model_config, pb.ModelConfigRequest),
                "ModelStatistics": unary(self.model_statistics, pb.ModelStatisticsRequest),
                "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest),
            },
        )

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self.router.settings.request_timeout_s
        return time.monotonic() + remaining

    # -- inference ------------------------------------------------------------------

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        model = version = ""
        code = grpc.StatusCode.OK
        self._in_flight_infer.inc()
        try:
            if self.draining:
                raise Unavailable("router is shutting down")
            headers = dict(context.invocation_metadata() or ())
            result = await self.router.infer(raw, headers, self._deadline(context))
            model, version = result.model, result.version
            context.set_trailing_metadata(((VERSION_TRAILER, version),))
            return result.response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = status_of(exc)
            if not isinstance(exc, ShunterError):
                logger.exception("ModelInfer failed")
            trailers: tuple[tuple[str, str], ...] = ()
            if isinstance(exc, RateLimited):
                trailers = ((RETRY_AFTER_TRAILER, str(max(1, round(exc.retry_after_s * 1000)))),)
            await context.abort(code, message, trailers)
            raise AssertionError("unreachable") from None
        finally:
            self._in_flight_infer.dec()
            self._observer.observe("ModelInfer", model, version, code, time.perf_counter() - start)

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Each message is routed on its own; responses go out as they complete, keeping ids."""
        headers = dict(context.invocation_metadata() or ())
        out: asyncio.Queue[bytes | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.router.settings.stream_max_in_flight)
        tasks: set[asyncio.Task] = set()

        async def one(raw: bytes) -> None:
            start = time.perf_counter()
            model = version = ""
            code = grpc.StatusCode.OK
            self._in_flight_stream.inc()
            try:
                if self.draining:
                    raise Unavailable("router is shutting down")
                result = await self.router.infer(raw, headers, self._deadline(context))
                model, version = result.model, result.version
                await out.put(wire.stream_response(result.response))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, message = status_of(exc)
                if not isinstance(exc, ShunterError):
                    logger.exception("ModelStreamInfer message failed")
                await out.put(_failed_stream_response(raw, message, code))
            finally:
                slots.release()
                self._in_flight_stream.dec()
                self._observer.observe("ModelStreamInfer", model, version, code, time.perf_counter() - start)

        async def read() -> None:
            try:
                async for raw in requests:
                    await slots.acquire()
                    task = asyncio.get_running_loop().create_task(one(raw))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                await out.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (message := await out.get()) is not None:
                yield message
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # -- server and model information -----------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.router.ready and not self.draining)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["statistics"])

    async def _guarded(self, context, name: str | None, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Authenticate (and authorise ``name``), then run ``fn``; errors become statuses."""
        try:
            headers = dict(context.invocation_metadata() or ())
            key = authenticate(self.router.snapshot, headers.get("authorization"))
            if name is not None:
                authorize(key, name)
            return await fn()
        except Exception as exc:
            code, message = status_of(exc)
            if not isinstance(exc, ShunterError):
                logger.exception("request failed")
            await context.abort(code, message)

    def _usable(self, entry: VersionEntry) -> bool:
        return bool(self.router.balancer.healthy(entry.workers))

    async def model_ready(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        async def answer() -> pb.ModelReadyResponse:
            model = self.router.snapshot.models.get(request.name)
            ready = model is not None and describe.model_ready(model, request.version, self._usable)
            return pb.ModelReadyResponse(ready=ready)

        return await self._guarded(context, request.name, answer)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        async def answer() -> pb.ModelMetadataResponse:
            return describe.model_metadata(*describe.find(self.router.snapshot, request.name, request.version))

        return await self._guarded(context, request.name, answer)

    async def model_config(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        async def answer() -> pb.ModelConfigResponse:
            return describe.model_config(*describe.find(self.router.snapshot, request.name, request.version))

        return await self._guarded(context, request.name, answer)

    async def repository_index(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        async def answer() -> pb.RepositoryIndexResponse:
            snapshot = self.router.snapshot
            key = authenticate(snapshot, dict(context.invocation_metadata() or ()).get("authorization"))
            return describe.repository_index(
                snapshot, lambda name: not key.models or name in key.models, request.ready
            )

        return await self._guarded(context, None, answer)

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        async def answer() -> pb.ModelStatisticsResponse:
            snapshot = self.router.snapshot
            key = authenticate(snapshot, dict(context.invocation_metadata() or ()).get("authorization"))
            if request.name:
                describe.find(snapshot, request.name, request.version)
                names = [request.name]
            else:
                names = [n for n in snapshot.models if not key.models or n in key.models]
            addresses = sorted({
                address
                for name in names
                for entry in snapshot.models[name].versions.values()
                if not request.version or entry.version == request.version
                for address in entry.workers
            })
            replicas = [self.router.balancer.replica(address) for address in addresses]
            results = await asyncio.gather(
                *(r.transport.statistics(request, timeout=STATISTICS_TIMEOUT_S) for r in replicas),
                return_exceptions=True,
            )
            responses = []
            for replica, result in zip(replicas, results, strict=True):
                if isinstance(result, BaseException):
                    logger.warning("statistics from %s failed: %s", replica.address, result)
                else:
                    responses.append(result)
            merged = describe.merge_statistics(responses)
            if not request.name:
                allowed = set(names)
                kept = [s for s in merged.model_stats if s.name in allowed]
                del merged.model_stats[:]
                merged.model_stats.extend(kept)
            return merged

        return await self._guarded(context, request.name or None, answer)


def _failed_stream_response(raw: bytes, message: str, code: grpc.StatusCode) -> bytes:
    """The failed message's stream response, with its id to match and its status (as workers send it)."""
    try:
        request = pb.ModelInferRequest.FromString(raw)
    except Exception:
        request = pb.ModelInferRequest()
    return inference_parameters.failed_stream_response(request, message, code).SerializeToString()
