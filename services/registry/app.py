"""The registry as a ``ServiceApp``: settings, bootstrap admin key, store and servicer."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from services.common import api_keys, redis_connect, version_windows
from services.common.errors import Unavailable
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from services.monitoring import service as monitor_service
from services.monitoring import windows as monitor_windows
from services.registry.catalogue import Catalogue
from services.registry.rollout.controller import ControllerSettings, RolloutController
from services.registry.rollout.service import RolloutService
from services.registry.service import RegistryService
from services.registry.settings import RegistrySettings
from services.registry.store import RedisStore, now_ms

logger = logging.getLogger(__name__)

SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["Registry"].full_name
ROLLOUT_SERVICE_NAME = opb.DESCRIPTOR.services_by_name["Rollouts"].full_name
MIN_BOOTSTRAP_KEY_LEN = 16


def bootstrap_key(path: Path) -> rpb.ApiKey:
    """The admin ApiKey record (hash only) for the key held in ``path``."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read admin key file {path}: {exc.strerror}") from None
    if len(text) < MIN_BOOTSTRAP_KEY_LEN or any(c.isspace() for c in text):
        raise ValueError(
            f"admin key file {path} must hold one key of at least {MIN_BOOTSTRAP_KEY_LEN} "
            "characters without spaces (e.g. `openssl rand -hex 32 > admin.key`)"
        )
    digest = api_keys.key_hash(text)
    key_id = api_keys.key_id_of(text) or f"boot-{digest[:8]}"
    return rpb.ApiKey(key_id=key_id, tenant="bootstrap", admin=True, created_at_ms=now_ms(), secret_sha256=digest)


class RegistryApp:
    name = "registry"
    service_names = (SERVICE_NAME, ROLLOUT_SERVICE_NAME, monitor_service.SERVICE_NAME)

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.bootstrap = bootstrap_key(settings.admin_key_file) if settings.admin_key_file else None
        self.store = RedisStore(
            settings.redis_url, settings.key_prefix, refresh_interval_s=settings.refresh_interval_s,
            lease_grace_s=settings.lease_ttl_s, wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )
        self.store.on_snapshot = self._ensure_bootstrap
        self.service = RegistryService(
            self.store, default_ttl_s=settings.lease_ttl_s, bootstrap=self.bootstrap,
            artifact_roots=settings.artifact_roots,
        )
        # The routers' per-version statistics: one hash tag on a Redis Cluster, so one client.
        stats_prefix = version_windows.stats_prefix(
            settings.key_prefix, cluster=redis_connect.is_cluster(settings.redis_url)
        )
        self._stats_redis = redis_connect.connect(
            settings.redis_url, slot_key=version_windows.slot_key(stats_prefix, "s", "", "", 0), socket_timeout=3.0
        )
        controller_settings = ControllerSettings(
            stats_prefix=stats_prefix, lease_ttl_s=settings.rollout_lease_ttl_s,
            tick_s=min(0.5, settings.rollout_lease_ttl_s / 4), keep_baseline_s=settings.rollout_keep_baseline_s,
            max_inconclusive=settings.rollout_max_inconclusive,
        )
        self.rollouts = RolloutService(self.service, controller_settings, self._stats_redis)

        # Reference profiles and drift window counts (services/monitoring), in the same Redis.
        cluster = redis_connect.is_cluster(settings.redis_url)
        monitor_keys = monitor_windows.Keys(settings.key_prefix, cluster=cluster)
        self._monitor_redis = redis_connect.connect(
            settings.redis_url, slot_key=monitor_keys.profile("", ""), socket_timeout=3.0
        )
        self.monitor = monitor_service.MonitorService(
            self.service, self.store.current, self._monitor_redis, settings.key_prefix, self.service.edge,
            cluster=cluster,
        )
        # The canary's drift, from the monitor in this process, is the rollout's drift gate.
        self.controller = RolloutController(self.store, controller_settings, self._stats_redis,
                                            drift=self.monitor.version_drift)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (self.service.handler(), self.rollouts.handler(), self.monitor.handler())
        )

    async def start(self) -> None:
        logger.info("registry: Redis at %s, key prefix %r", self.store.where, self.settings.key_prefix)
        if self.settings.artifact_roots:
            logger.info("registry: artifacts only under %s", ", ".join(map(str, self.settings.artifact_roots)))
        else:
            logger.warning("registry: no --artifact-root given; any local path may be registered as an artifact")
        await self.store.start()
        self.controller.start()
        await self.monitor.start()
        if self.store.catalogue is None:
            logger.warning("registry: starting without Redis; serving nothing until it answers")
        if self.bootstrap is None:
            logger.info("registry: no --admin-key-file; only admin keys already in Redis are accepted")

    async def drain(self) -> None:
        self.service.drain()

    async def close(self) -> None:
        await self.controller.close()
        await self._stats_redis.aclose()
        await self.monitor.close()
        await self._monitor_redis.aclose()
        await self.store.close()

    async def _ensure_bootstrap(self, catalogue: Catalogue) -> None:
        """Keep the bootstrap key in Redis (its hash), e.g. after Redis lost its data."""
        key = self.bootstrap
        if key is None or key.secret_sha256 in catalogue.keys_by_hash:
            return
        try:
            if await self.store.add_key_if_absent(key):
                logger.info("registry: stored bootstrap admin key %s (its hash only)", key.key_id)
        except Unavailable:
            pass
