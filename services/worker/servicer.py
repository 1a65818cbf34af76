"""inference.GRPCInferenceService on the worker: convert, call the models, convert back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from services.common import inference_parameters
from services.common import metrics as common_metrics
from services.common.datatypes import DATATYPES
from services.common.errors import InvalidArgument, ShunterError, Unavailable
from services.common.grpc_errors import grpc_method, status_of
from services.common.model_config import TRITON_PLATFORMS
from services.common.tensors import decode_request, fill_outputs
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from services.worker.models import LoadedVersion, ModelManager
from services.worker.statistics import Duration, VersionStatistics

logger = logging.getLogger(__name__)

SERVER_NAME = "shunter"
SERVER_VERSION = "0.1.0"


_TYPE_ENUM = {name: pb.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}") for name in DATATYPES}


class WorkerServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: ModelManager) -> None:
        self._models = models
        self.draining = False
        #: Reader tasks of the open ModelStreamInfer calls (ended on drain).
        self._streams: set[asyncio.Task] = set()
        self._observer = common_metrics.RpcObserver(
            "worker", common_metrics.known_labels(lambda model: models.models().get(model))
        )
        self._in_flight = {
            method: common_metrics.IN_FLIGHT.labels("worker", method) for method in ("ModelInfer", "ModelStreamInfer")
        }

    # -- health-style RPCs -------------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=not self.draining)

    @grpc_method
    async def ModelReady(self, request, context):
        try:
            loaded = self._models.get(request.name, request.version)
        except ShunterError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=loaded.ready and not self.draining)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["statistics"])

    @grpc_method
    async def ModelMetadata(self, request, context):
        loaded = self._models.get(request.name, request.version)
        versions = sorted(self._models.models().get(request.name, {}), key=int)
        response = pb.ModelMetadataResponse(
            name=loaded.model, versions=versions, platform=TRITON_PLATFORMS[loaded.config.backend]
        )
        batch = [-1] if loaded.signature.batched else []
        for spec, target in ((loaded.signature.inputs, response.inputs), (loaded.signature.outputs, response.outputs)):
            for tensor in spec:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=[*batch, *tensor.shape])
        return response

    @grpc_method
    async def ModelConfig(self, request, context):
        loaded = self._models.get(request.name, request.version)
        config = loaded.config
        message = pb.ModelConfig(
            name=loaded.model,
            platform=TRITON_PLATFORMS[config.backend],
            backend=config.backend,
            max_batch_size=config.max_batch_size,
        )
        for tensor in config.inputs:
            message.input.add(name=tensor.name, data_type=_TYPE_ENUM[tensor.datatype], dims=tensor.shape)
        for tensor in config.outputs:
            message.output.add(name=tensor.name, data_type=_TYPE_ENUM[tensor.datatype], dims=tensor.shape)
        kind = pb.ModelInstanceGroup.KIND_CPU if config.device == "cpu" else pb.ModelInstanceGroup.KIND_GPU
        message.instance_group.add(name=f"{loaded.model}_0", count=config.instances, kind=kind)
        if config.dynamic_batching is not None:
            batching = config.dynamic_batching
            message.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
            message.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
            message.dynamic_batching.default_queue_policy.max_queue_size = batching.max_queue_size
        return pb.ModelConfigResponse(config=message)

    @grpc_method
    async def ModelStatistics(self, request, context):
        response = pb.ModelStatisticsResponse()
        if request.name:
            if request.version:
                selected = [self._models.get(request.name, request.version)]
            else:
                self._models.get(request.name)  # NOT_FOUND for an unknown model
                selected = list(self._models.models().get(request.name, {}).values())
        else:
            selected = [v for versions in self._models.models().values() for v in versions.values()]
        for loaded in selected:
            _fill_statistics(response.model_stats.add(), loaded)
        return response

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for model, versions in sorted(self._models.models().items()):
            for version, loaded in sorted(versions.items(), key=lambda kv: int(kv[0])):
                if request.ready and not loaded.ready:
                    continue
                response.models.add(name=model, version=version, state=loaded.state.value, reason=loaded.error)
        return response

    # -- inference ---------------------------------------------------------------------
    async def _infer(self, request: pb.ModelInferRequest, timeout_s: float | None) -> pb.ModelInferResponse:
        if self.draining:
            raise Unavailable("worker is shutting down")
        loaded: LoadedVersion = self._models.get(request.model_name, request.model_version)
        decoded = decode_request(request, loaded.signature)
        if loaded.signature.batched and decoded.batch_size == 0:
            raise InvalidArgument("batch size 0: send at least one row")
        outputs = await loaded.infer(decoded.inputs, decoded.batch_size, timeout_s)
        response = pb.ModelInferResponse(model_name=loaded.model, model_version=loaded.version, id=request.id)
        fill_outputs(response, outputs, decoded.outputs or loaded.output_names, loaded.output_datatypes)
        return response

    async def _observed_infer(
        self, method: str, request: pb.ModelInferRequest, timeout_s: float | None
    ) -> pb.ModelInferResponse:
        """_infer with the RPC metrics: count by the version that served, latency, in-flight."""
        start = time.perf_counter()
        version = request.model_version
        code = grpc.StatusCode.OK
        in_flight = self._in_flight[method]
        in_flight.inc()
        try:
            response = await self._infer(request, timeout_s)
            version = response.model_version
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, _ = status_of(exc)
            raise
        finally:
            in_flight.dec()
            self._observer.observe(method, request.model_name, version, code, time.perf_counter() - start)

    async def ModelInfer(self, request, context):
        try:
            return await self._observed_infer("ModelInfer", request, _time_limit(request, context))
        except ShunterError as exc:
            await context.abort(exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("ModelInfer failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see server log)")

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request is served as it arrives; responses carry the request's id.

        A failed request's response carries, besides ``error_message``, an
        ``infer_response`` with the request's id and the gRPC status code in
        ``parameters["shunter_status_code"]``: a router multiplexing requests over the
        stream passes on the same status a ModelInfer call would have had. When the worker
        drains, the stream stops reading, answers what it took, and ends (OK); the
        requests it never read are the caller's to retry elsewhere.
        """
        responses: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def serve_one(request: pb.ModelInferRequest) -> None:
            try:
                result = await self._observed_infer("ModelStreamInfer", request, _time_limit(request, context))
                responses.put_nowait(pb.ModelStreamInferResponse(infer_response=result))
            except Exception as exc:
                code, message = status_of(exc)
                if not isinstance(exc, ShunterError):
                    logger.exception("stream request failed")
                responses.put_nowait(inference_parameters.failed_stream_response(request, message, code))

        async def read_all() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(serve_one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                while tasks:
                    await asyncio.wait(set(tasks))
                responses.put_nowait(None)

        reader = asyncio.create_task(read_all())
        self._streams.add(reader)
        try:
            while True:
                item = await responses.get()
                if item is None:
                    break
                yield item
        finally:
            self._streams.discard(reader)
            reader.cancel()
            for task in tasks:
                task.cancel()

    def end_streams(self) -> None:
        """Stop reading every open stream; each ends once its requests are answered."""
        for reader in self._streams:
            reader.cancel()


def _time_limit(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> float | None:
    """Seconds the request may take: the call's deadline, or Triton's ``timeout`` parameter (µs).

    On a stream, the call's deadline is the stream's; each request's own deadline comes
    in its ``timeout`` parameter. 0 or less means none, as in Triton.
    """
    remaining = context.time_remaining()
    timeout_us = inference_parameters.timeout_us(request)
    if timeout_us is None:
        return remaining
    limit = timeout_us / 1_000_000
    return limit if remaining is None else min(remaining, limit)


def _duration(target, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns


def _fill_statistics(message: pb.ModelStatistics, loaded: LoadedVersion) -> None:
    stats: VersionStatistics = loaded.stats
    message.name = loaded.model
    message.version = loaded.version
    message.last_inference = stats.last_inference_ms
    message.inference_count = stats.inference_count
    message.execution_count = stats.execution_count
    inference = message.inference_stats
    for field_name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _duration(getattr(inference, field_name), getattr(stats, field_name))
    for batch_size, bucket in sorted(stats.by_batch_size.items()):
        entry = message.batch_stats.add(batch_size=batch_size)
        _duration(entry.compute_input, bucket.compute_input)
        _duration(entry.compute_infer, bucket.compute_infer)
        _duration(entry.compute_output, bucket.compute_output)
