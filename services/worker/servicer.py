"""inference.GRPCInferenceService on the worker: convert, call the models, convert back.

Built on the common gRPC edge (``services.common.edge``): statuses, RPC metrics and
interceptors come from there. Requests are parsed by the edge, so an unparseable message
is INVALID_ARGUMENT; ModelStreamInfer serves each message on its own.
"""

from __future__ import annotations

import logging

import grpc

from services.common import edge, inference_parameters, model_description, tracing
from services.common.admission import Admission
from services.common.errors import ShunterError, Unavailable
from services.common.tensors import decode_request, fill_outputs
from services.gen.inference import grpc_service_pb2 as pb
from services.worker.models import LoadedVersion, ModelManager
from services.worker.statistics import Duration, VersionStatistics

logger = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVER_NAME = "shunter"
SERVER_VERSION = "0.1.0"


class WorkerServicer:
    def __init__(self, models: ModelManager, admission: Admission | None = None) -> None:
        self._models = models
        self.draining = False
        self.edge = edge.Edge("worker", tracing.interceptors("worker"))
        self.admission = admission or Admission("worker")
        self.edge.add(self.admission)

    def handler(self) -> grpc.GenericRpcHandler:
        methods = edge.generated_methods(SERVICE, self)
        methods["ModelStreamInfer"] = edge.BidiStream(
            self.stream_message, inference_parameters.failed_stream_response_bytes
        )
        return self.edge.handler(SERVICE.full_name, methods)

    def _lookup(self, name: str, version: str = "") -> LoadedVersion:
        """The version a request names; labels the call by it (or as an unknown model)."""
        try:
            loaded = self._models.get(name, version)
        except ShunterError:
            edge.label(name if name in self._models.models() else edge.UNKNOWN_MODEL)
            raise
        edge.label(loaded.model, loaded.version)
        return loaded

    # -- health-style RPCs -------------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=not self.draining)

    async def ModelReady(self, request, context):
        try:
            loaded = self._lookup(request.name, request.version)
        except ShunterError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=loaded.ready and not self.draining)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["statistics"])

    async def ModelMetadata(self, request, context):
        loaded = self._lookup(request.name, request.version)
        versions = self._models.models().get(request.name, {})
        return model_description.metadata_response(loaded.model, versions, loaded.config.backend, loaded.signature)

    async def ModelConfig(self, request, context):
        loaded = self._lookup(request.name, request.version)
        config = loaded.config
        batching = config.dynamic_batching
        described = (
            model_description.Batching(
                tuple(batching.preferred_batch_sizes), batching.max_queue_delay_us, batching.max_queue_size
            )
            if batching is not None
            else None
        )
        instances = model_description.Instances(config.instances, config.device)
        return model_description.config_response(loaded.model, config.backend, loaded.signature, described, instances)

    async def ModelStatistics(self, request, context):
        response = pb.ModelStatisticsResponse()
        if request.name:
            if request.version:
                selected = [self._lookup(request.name, request.version)]
            else:
                self._lookup(request.name)  # NOT_FOUND for an unknown model
                selected = list(self._models.models().get(request.name, {}).values())
        else:
            selected = [v for versions in self._models.models().values() for v in versions.values()]
        for loaded in selected:
            _fill_statistics(response.model_stats.add(), loaded)
        return response

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for model, versions in sorted(self._models.models().items()):
            for version, loaded in sorted(versions.items(), key=lambda kv: model_description.version_order(kv[0])):
                if request.ready and not loaded.ready:
                    continue
                response.models.add(name=model, version=version, state=loaded.state.value, reason=loaded.error)
        return response

    # -- inference ---------------------------------------------------------------------
    async def _infer(
        self, request: pb.ModelInferRequest, timeout_s: float | None, response: pb.ModelInferResponse
    ) -> None:
        """Serve ``request`` into ``response`` (an empty message, or a stream response's part)."""
        tracing.current().adopt(request.parameters)  # a router sends the trace context there
        if self.draining:
            raise Unavailable("worker is shutting down")
        loaded = self._lookup(request.model_name, request.model_version)
        self.admission.admit(loaded.model, loaded.version, timeout_s)
        loaded.admit(timeout_s)  # the queue's time bounds, before the request is decoded
        decoded = decode_request(request, loaded.signature)
        outputs = await loaded.infer(decoded.inputs, decoded.batch_size, timeout_s)
        response.model_name = loaded.model
        response.model_version = loaded.version
        response.id = request.id
        fill_outputs(response, outputs, decoded.outputs or loaded.output_names, loaded.output_datatypes)

    async def ModelInfer(self, request, context):
        response = pb.ModelInferResponse()
        await self._infer(request, _time_limit(request, context), response)
        return response

    async def stream_message(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One ModelStreamInfer message; its response carries the request's id.

        A failed request's response carries, besides ``error_message``, an
        ``infer_response`` with the request's id and the gRPC status code in
        ``parameters["shunter_status_code"]`` (``inference_parameters``): a router
        multiplexing requests over the stream passes on the same status a ModelInfer call
        would have had. When the worker drains, the stream stops reading, answers what it
        took, and ends (OK); the requests it never read are the caller's to retry elsewhere.
        The response is built in place inside its stream wrapper, so it is serialised once.
        """
        request = edge.parse(pb.ModelInferRequest, raw)
        message = pb.ModelStreamInferResponse()
        if not request.model_name and inference_parameters.PING in request.parameters:
            # A router's liveness ping (services/router/worker_client.py): answered at once, unqueued.
            message.infer_response.id = request.id
            return message.SerializeToString()
        await self._infer(request, _time_limit(request, context), message.infer_response)
        return message.SerializeToString()

    def end_streams(self) -> None:
        """Stop reading every open stream; each ends once its requests are answered."""
        self.edge.end_streams()


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
