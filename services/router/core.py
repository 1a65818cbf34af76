"""The request path: auth → rate limit → version choice → validation → cache → forward.

``Router.infer`` takes the caller's serialised ModelInferRequest and returns the
worker's serialised response, so the gRPC layer (servicer.py) only maps outcomes to
statuses. The request is parsed once, for the model name and validation; the bytes that
go to the worker are the caller's own (plus an appended ``model_version`` when the
split chose one), and the response bytes come back untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from services.common import edge, inference_parameters, redis_connect, tracing, version_windows, wire
from services.common.admission import Admission, Overloaded
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.common.tensors import decode_request
from services.gen.inference import grpc_service_pb2 as pb
from services.router import describe, metrics
from services.router.auth import authenticate, authorize
from services.router.balancer import Balancer
from services.router.cache import ResponseCache, canonical_digest, strip_id
from services.router.limiter import RateLimiter
from services.router.payload_log import PayloadLog, parse_target
from services.router.redis_link import RedisLink
from services.router.settings import RouterSettings
from services.router.shadow import ShadowMirror
from services.router.table import KeyEntry, ModelEntry, RoutingSnapshot, VersionEntry
from services.router.version_stats import VersionStats
from services.router.worker_client import Forward, Liveness, WorkerTransport, forward_infer

logger = logging.getLogger(__name__)

#: Trailing metadata on RESOURCE_EXHAUSTED from a rate limit.
RETRY_AFTER_TRAILER = "retry-after-ms"
#: Time allowed for each worker's answer when summing statistics.
STATISTICS_TIMEOUT_S = 5.0


class RateLimited(ResourceExhausted):
    """A key's rate limit: RESOURCE_EXHAUSTED with a retry-after hint in the trailers."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.trailing_metadata = ((RETRY_AFTER_TRAILER, str(max(1, round(retry_after_s * 1000)))),)


@dataclass(slots=True)
class InferResult:
    response: bytes
    model: str
    version: str


class Router:
    """Everything one router replica holds: the snapshot, workers, Redis-backed helpers."""

    def __init__(self, settings: RouterSettings, *, redis: RedisLink | None = None) -> None:
        self.settings = settings
        self.snapshot = RoutingSnapshot.empty()
        self.redis = redis or RedisLink(
            settings.redis_url or None,
            timeout_s=settings.redis_timeout_s,
            retry_after_s=settings.redis_retry_after_s,
        )
        liveness = Liveness(settings.liveness_interval_s, settings.liveness_timeout_s)
        self.balancer = Balancer(
            lambda address: WorkerTransport(
                address, settings.max_message_bytes, settings.worker_link, liveness,
                tls=settings.client_tls, key=settings.admin_key,
            ),
            eject_after=settings.eject_after_failures,
            cooloff_s=settings.eject_cooloff_s,
            max_outstanding=settings.max_in_flight_per_worker,
            limit_ttl_s=settings.worker_limit_ttl_s,
            outlier_ratio=settings.outlier_ratio,
            outlier_min_gap_s=settings.outlier_min_gap_s,
            outlier_cooloff_s=settings.outlier_cooloff_s,
        )
        #: Added to the servicer's edge; ``infer`` admits each request once its version is known.
        self.admission = Admission("router", settings.admission)
        self.limiter = RateLimiter(self.redis, settings.key_prefix)
        self.cache = ResponseCache(self.redis, settings.key_prefix, settings.near_cache_bytes)
        self.shadow = ShadowMirror(pb.ModelInferResponse, settings.shadow_max_in_flight)
        #: Per-version counts for rollout gates (an edge interceptor, flushed to Redis).
        cluster = bool(settings.redis_url) and redis_connect.is_cluster(settings.redis_url)
        self.version_stats = VersionStats(
            self.redis, version_windows.stats_prefix(settings.key_prefix, cluster=cluster),
            interval_s=settings.version_stats_interval_s,
        )
        self.shadow.on_outcome = self.version_stats.shadow_result
        self.payload_log = None
        if settings.payload_log:
            self.payload_log = PayloadLog(
                parse_target(settings.payload_log), settings.payload_sample,
                maxlen=settings.payload_log_maxlen, queue_size=settings.payload_log_queue,
            )
        self._closing: set[asyncio.Task] = set()
        #: Labelled split counters by (model, version): labels() costs more than inc().
        self._split_counters: dict[tuple[str, str], Any] = {}

    # -- routing table --------------------------------------------------------------

    def install(self, snapshot: RoutingSnapshot) -> None:
        """Swap in a new routing table; close channels to workers that left it."""
        self.snapshot = snapshot
        metrics.TABLE_REVISION.set(snapshot.revision)
        for replica in self.balancer.retain(snapshot.worker_addresses):
            if replica.transport is not None:
                # Grace lets calls already on the channel finish.
                task = asyncio.get_running_loop().create_task(replica.transport.close(5.0))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    @property
    def ready(self) -> bool:
        return self.snapshot.revision > 0

    def deadline(self, remaining_s: float | None) -> float:
        """The request's deadline on the monotonic clock: the caller's, or the default timeout."""
        if remaining_s is None:
            remaining_s = self.settings.request_timeout_s
        return time.monotonic() + remaining_s

    # -- the request path -----------------------------------------------------------

    async def infer(
        self, raw: bytes, headers: Mapping[str, str], deadline: float, *, stream: bool = False
    ) -> InferResult:
        """The answer to ``raw``: the worker's ModelInferResponse bytes, or with ``stream``
        (a ModelStreamInfer message) the ModelStreamInferResponse that carries it."""
        snapshot = self.snapshot
        key = authenticate(snapshot, headers.get("authorization"))
        try:
            request = pb.ModelInferRequest.FromString(raw)
        except DecodeError:
            raise InvalidArgument("the request is not a valid ModelInferRequest") from None
        name = request.model_name
        authorize(key, name)
        trace = tracing.current()
        trace.event("auth")
        if key.per_second > 0:
            bucket = f"{key.key_id}:{name}" if key.per_model else key.key_id
            with trace.child("rate_limit"):
                wait_s = await self.limiter.acquire(bucket, key.per_second, key.burst)
            if wait_s > 0:
                metrics.RATE_LIMITED.labels(name if name in snapshot.models else "").inc()
                raise RateLimited(
                    f"rate limit of {key.per_second:g}/s for key '{key.key_id}' exceeded; "
                    f"retry after {wait_s * 1000:.0f} ms",
                    wait_s,
                )
        model = snapshot.models.get(name)
        if model is None:
            edge.label(edge.UNKNOWN_MODEL)
            raise NotFound(f"unknown model '{name}'" if name else "the request names no model")
        if request.model_version:
            entry = model.versions.get(request.model_version)
            if entry is None:
                edge.label(name)
                raise NotFound(f"unknown version '{request.model_version}' of model '{name}'")
            overrides = b""
        else:
            entry = self.choose_version(model, headers)
            # The split's version rides beside the caller's bytes (joined in the link's one copy).
            overrides = wire.model_version_field(entry.version)
            trace.event("split", {"shunter.variant": entry.version})
        edge.label(name, entry.version)
        trace.set("shunter.variant", entry.version)
        self.admission.admit(name, entry.version, deadline - time.monotonic())
        if self.balancer.at_capacity(entry.workers):
            # Before validation and the cache: a refused request needs neither.
            metrics.WORKERS_AT_CAP.inc()
            raise Overloaded(self.balancer.full_reason(entry.workers))
        decoded = decode_request(request, entry.signature, materialize=False)
        trace.event("validated")
        if not entry.workers:
            raise Unavailable(f"no ready worker for model '{name}' version '{entry.version}'")

        policy = model.policy
        cache_key = None
        ttl = policy.cache_ttl_s or self.settings.default_cache_ttl_s
        if policy.cache_enabled:
            cache_key = self.cache.key(name, entry.version, canonical_digest(request, decoded))
            with trace.child("cache"):
                cached = await self.cache.get(name, cache_key, request.id, ttl)
            trace.set("shunter.cache_hit", cached is not None)
            if cached is not None:
                return InferResult(wire.stream_response(cached) if stream else cached, name, entry.version)

        started = time.perf_counter()
        hedge = self.settings.hedge_after_s if name in self.settings.hedge_models else None
        # Trace context rides in the request's parameters, so a traced request keeps the stream link.
        with trace.child("forward", client=True):
            # The caller's bytes go as they came; the link joins the overrides on in its one copy.
            forward = Forward(
                raw=raw,
                deadline=deadline,
                caller_id=request.id,
                caller_timeout_us=inference_parameters.timeout_us(request),
                overrides=overrides + trace.outgoing(headers),
                stream_response=stream,
            )
            response = await forward_infer(self.balancer, entry.workers, forward, hedge)
        primary_s = time.perf_counter() - started

        shadow_version = policy.shadow_version
        if shadow_version == entry.version:
            shadow_version = ""
        if cache_key is not None or shadow_version:
            bare = bytes(wire.stream_payload(response)) if stream else response
            if cache_key is not None:
                await self.cache.put(cache_key, strip_id(bare), ttl)
            if shadow_version:
                self._mirror(model, shadow_version, forward, bare, primary_s)
        return InferResult(response, name, entry.version)

    def choose_version(self, model: ModelEntry, headers: Mapping[str, str]) -> VersionEntry:
        """The split's choice, or the fallback version when the choice has no usable worker."""
        sticky = headers.get(model.sticky_header) if model.sticky_header else None
        chosen = model.split.choose(sticky.encode() if sticky is not None else None) or model.default_version
        entry = model.versions[chosen]
        if not self.balancer.healthy(entry.workers):
            fallback = model.versions.get(model.policy.fallback_version)
            if fallback is not None and fallback is not entry and self.balancer.healthy(fallback.workers):
                metrics.FALLBACK.labels(model.name, fallback.version).inc()
                entry = fallback
        counter = self._split_counters.get((model.name, entry.version))
        if counter is None:
            counter = self._split_counters[(model.name, entry.version)] = metrics.SPLIT.labels(
                model.name, entry.version
            )
        counter.inc()
        return entry

    def _mirror(
        self, model: ModelEntry, version: str, primary: Forward, response: bytes, primary_s: float = 0.0
    ) -> None:
        """A copy of the request to the shadow ``version``, its answer compared with ``response``."""
        entry = model.versions.get(version)
        if entry is None or not entry.workers:
            metrics.SHADOW.labels(model.name, version, "error").inc()
            return
        # Appended last, the shadow's version overrides any the split appended.
        overrides = primary.overrides + wire.model_version_field(version)
        timeout_s = self.settings.shadow_timeout_s

        async def send() -> bytes:
            copy = primary.to(overrides, time.monotonic() + timeout_s)
            return await forward_infer(self.balancer, entry.workers, copy)

        self.shadow.mirror(model.name, version, response, send, primary_s, primary.raw)

    # -- statistics -----------------------------------------------------------------

    async def statistics(self, request: pb.ModelStatisticsRequest, key: KeyEntry) -> pb.ModelStatisticsResponse:
        """The statistics of every worker serving the named model (or all ``key`` may see), summed."""
        snapshot = self.snapshot
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
        replicas = [self.balancer.replica(address) for address in addresses]
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

    async def close(self) -> None:
        await self.version_stats.close()
        await self.shadow.close()
        if self.payload_log is not None:
            await self.payload_log.close()
        transports = [r.transport for r in self.balancer.retain(()) if r.transport is not None]
        await asyncio.gather(*(t.close() for t in transports), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.redis.close()
