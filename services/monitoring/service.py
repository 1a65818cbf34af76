"""The ``shunter.monitor.v1.Monitor`` service, served by the registry process.

Authorisation is the registry's (an admin key, services/registry/service.py); versions
and their config.yaml come from the registry's catalogue; profiles and window counts
live in the same Redis (windows.py). A refresh task re-scores every profiled version
every REFRESH_S and keeps the results for ``shunter_drift_score``, so Prometheus reads
one cluster-wide score per feature from the registry without touching Redis on scrape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import grpc
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from services.common import background, edge
from services.common.errors import FailedPrecondition, InvalidArgument, ModelConfigError, NotFound, Unavailable
from services.common.model_config import ModelConfig, parse_model_config
from services.common.monitoring_config import DriftConfig
from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.monitoring import windows
from services.monitoring.features import plan_features
from services.monitoring.profile import BinCounter, Profile, ProfileError

logger = logging.getLogger(__name__)

SERVICE = mpb.DESCRIPTOR.services_by_name["Monitor"]
SERVICE_NAME = SERVICE.full_name
REFRESH_S = 5.0
#: Features a profile may hold, whatever the config says (bounds the metric's series too).
MAX_PROFILE_FEATURES = 1024


class Authoriser(Protocol):
    """The registry's key check: the caller's key if its role may call ``method``."""

    async def authorise(self, context: grpc.aio.ServicerContext, method: str) -> Any: ...


def drift_config(config: ModelConfig) -> DriftConfig:
    return config.monitoring.drift if config.monitoring is not None else DriftConfig()


class MonitorService:
    def __init__(
        self, auth: Authoriser, catalogue: Callable[[], Awaitable[Any]], redis: Any, key_prefix: str,
        rpc_edge: edge.Edge | None = None, *, cluster: bool = False,
    ) -> None:
        self._auth = auth
        self._catalogue = catalogue
        self._redis = redis
        self._prefix = key_prefix
        self._cluster = cluster
        self._keys = windows.Keys(key_prefix, cluster=cluster)
        #: The registry's own edge, so its interceptors (metrics, tracing) cover these RPCs too.
        self.edge = rpc_edge or edge.Edge("registry")
        self._task: asyncio.Task | None = None
        #: Versions are immutable: each one's drift settings, parsed once (None: no monitoring block).
        self._configs: dict[tuple[str, str, int], DriftConfig | None] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        return self.edge.handler(SERVICE_NAME, edge.generated_methods(SERVICE, self))

    async def _caller(self, context: grpc.aio.ServicerContext, method: str, model: str, version: str = "") -> Any:
        if getattr(self._auth, "draining", False):
            raise Unavailable("the registry is shutting down; try another replica")
        key = await self._auth.authorise(context, method)
        edge.label(model, version if version.isdigit() else "")
        return key

    async def _version(self, model: str, version: str) -> tuple[Any, ModelConfig]:
        catalogue = await self._catalogue()
        for entry in catalogue.models():
            if entry.name != model:
                continue
            for v in entry.versions:
                if v.version == version:
                    source = f"config.yaml of {model} version {version}"
                    try:
                        return v, parse_model_config(v.config_yaml, source)
                    except ModelConfigError as exc:
                        raise FailedPrecondition(str(exc)) from None
            raise NotFound(f"model {model!r} has no version {version!r}")
        raise NotFound(f"unknown model {model!r}")

    def _redis_error(self, exc: RedisError) -> Unavailable:
        return Unavailable(f"the registry's Redis is unavailable ({type(exc).__name__})")

    # ---- RPCs ------------------------------------------------------------------------

    async def SetReferenceProfile(
        self, request: mpb.SetReferenceProfileRequest, context: grpc.aio.ServicerContext
    ) -> mpb.ReferenceProfile:
        sent = request.profile
        caller = await self._caller(context, "SetReferenceProfile", sent.model, sent.version)
        _, config = await self._version(sent.model, sent.version)
        if len(sent.features) > MAX_PROFILE_FEATURES:
            raise InvalidArgument(f"the profile has {len(sent.features)} features; at most {MAX_PROFILE_FEATURES}")
        try:
            profile = Profile.from_proto(sent)
        except ProfileError as exc:
            raise InvalidArgument(f"bad reference profile: {exc}") from None
        expected = plan_features(config.inputs, drift_config(config).max_features).names
        if profile.names != expected:
            missing = [n for n in expected if n not in profile.names][:3]
            extra = [n for n in profile.names if n not in expected][:3]
            raise InvalidArgument(
                f"the profile's {len(profile.names)} features do not match the {len(expected)} of "
                f"{sent.model} version {sent.version}'s signature (missing {missing or 'none'}, "
                f"unexpected {extra or 'none'}); build it with `shunter drift baseline`"
            )
        stored = mpb.ReferenceProfile()
        stored.CopyFrom(sent)
        stored.profile_id = profile.profile_id
        stored.creator = getattr(caller, "key_id", "")
        stored.created_at_ms = int(time.time() * 1000)
        try:
            await windows.store_profile(self._redis, self._keys, stored)
        except RedisError as exc:
            raise self._redis_error(exc) from None
        logger.info("monitor: %s stored a reference profile for %s version %s (%d features, %d rows, id %s)",
                    stored.creator, stored.model, stored.version, len(stored.features), stored.rows,
                    stored.profile_id)
        return stored

    async def GetReferenceProfile(
        self, request: mpb.GetReferenceProfileRequest, context: grpc.aio.ServicerContext
    ) -> mpb.ReferenceProfile:
        await self._caller(context, "GetReferenceProfile", request.model, request.version)
        try:
            found = await windows.load_profile(self._redis, self._keys, request.model, request.version)
        except RedisError as exc:
            raise self._redis_error(exc) from None
        if found is None:
            raise NotFound(f"{request.model} version {request.version} has no reference profile")
        return found

    async def ReportDriftCounts(
        self, request: mpb.DriftCounts, context: grpc.aio.ServicerContext
    ) -> mpb.ReportDriftCountsResponse:
        await self._caller(context, "ReportDriftCounts", request.model, request.version)
        try:
            found = await windows.load_profile(self._redis, self._keys, request.model, request.version)
            if found is None:
                raise NotFound(f"{request.model} version {request.version} has no reference profile")
            if found.profile_id != request.profile_id:
                # Counted against a replaced baseline: dropped; the worker refetches.
                return mpb.ReportDriftCountsResponse(profile_id=found.profile_id)
            counter = BinCounter(Profile.from_proto(found))
            if request.bins_per_feature != counter.width or len(request.counts) != counter.features * counter.width:
                raise InvalidArgument(
                    f"counts are {len(request.counts)} values of width {request.bins_per_feature}; the profile "
                    f"needs {counter.features} features x {counter.width} bins"
                )
            if request.window_s <= 0:
                raise InvalidArgument("window_s must be positive")
            await windows.add_counts(self._redis, self._keys, request)
        except RedisError as exc:
            raise self._redis_error(exc) from None
        return mpb.ReportDriftCountsResponse(profile_id=found.profile_id)

    async def GetDrift(self, request: mpb.GetDriftRequest, context: grpc.aio.ServicerContext) -> mpb.GetDriftResponse:
        await self._caller(context, "GetDrift", request.model, request.version)
        catalogue = await self._catalogue()
        entry = next((m for m in catalogue.models() if m.name == request.model), None)
        if entry is None:
            raise NotFound(f"unknown model {request.model!r}")
        wanted = [v for v in entry.versions if not request.version or v.version == request.version]
        if request.version and not wanted:
            raise NotFound(f"model {request.model!r} has no version {request.version!r}")
        response = mpb.GetDriftResponse()
        try:
            for v in wanted:
                result = await self._score(request.model, v)
                if result.profile_id or request.version:
                    response.versions.append(result)
        except RedisError as exc:
            raise self._redis_error(exc) from None
        return response

    def _drift_config(self, model: str, version: Any) -> DriftConfig | None:
        key = (model, version.version, version.created_at_ms)
        if key not in self._configs:
            try:
                config = parse_model_config(version.config_yaml, f"{model} version {version.version}")
                self._configs[key] = config.monitoring.drift if config.monitoring is not None else None
            except ModelConfigError:
                self._configs[key] = None
        return self._configs[key]

    async def _score(self, model: str, version: Any) -> mpb.VersionDrift:
        config = self._drift_config(model, version) or DriftConfig()
        return await windows.drift_score(
            self._redis, model, version.version, key_prefix=self._prefix, config=config, cluster=self._cluster
        )

    async def version_drift(self, version: Any) -> mpb.VersionDrift:
        """The cluster's drift of one registry ModelVersion (for the rollout controller in
        this process: no Redis client or key layout of its own needed)."""
        return await self._score(version.model, version)

    # ---- the metric ------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="monitor-drift-refresh")

    async def close(self) -> None:
        await background.stop(self._task)  # bounded: Redis may be resetting connections
        self._task = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh_scores()
            except (RedisError, Unavailable) as exc:
                background.raise_if_cancelled()  # a cancel redis-py turned into ConnectionError
                logger.debug("monitor: drift refresh skipped: %s", exc)
            except Exception:
                logger.exception("monitor: drift refresh failed")

    async def refresh_scores(self) -> None:
        catalogue = await self._catalogue()
        results: dict[tuple[str, str], mpb.VersionDrift] = {}
        for entry in catalogue.models():
            for version in entry.versions:
                if version.state == rpb.ARCHIVED or self._drift_config(entry.name, version) is None:
                    continue  # workers count drift only for live versions with a monitoring block
                result = await self._score(entry.name, version)
                if result.scored:
                    results[(entry.name, version.version)] = result
        SCORES.results = results


class DriftScoreCollector(Collector):
    """``shunter_drift_score{model,version,feature,method}``: the latest complete window's
    cluster-wide score, for every feature of the version's profile (at most
    ``monitoring.drift.max_features``, default 128, per version: features.py), and
    ``shunter_drift_window_rows{model,version}``: the rows that window held."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], mpb.VersionDrift] = {}

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("shunter_drift_score", "Input drift of a feature in the latest complete window "
                              "against the version's reference profile (psi, js, ks).",
                              labels=["model", "version", "feature", "method"]),
            GaugeMetricFamily("shunter_drift_window_rows", "Rows (all workers) in the window the drift score "
                              "was computed on.", labels=["model", "version"]),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        scores, rows = self._families()
        for (model, version), result in list(self.results.items()):
            rows.add_metric([model, version], result.rows)
            for f in result.features:
                for method in ("psi", "js", "ks"):
                    scores.add_metric([model, version, f.feature, method], getattr(f, method))
        yield scores
        yield rows

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()


SCORES = DriftScoreCollector()
REGISTRY.register(SCORES)
