"""The worker as a ServiceApp: serve a local repository, or what the registry assigns."""

from __future__ import annotations

import dataclasses
import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from services.common.admission import Admission, AdmissionSettings
from services.common.errors import ModelConfigError
from services.common.tls import ClientTls
from services.gen.inference import grpc_service_pb2 as pb
from services.worker.guard import InferenceGuard
from services.worker.models import ModelManager
from services.worker.repository import scan_repository
from services.worker.servicer import WorkerServicer
from services.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from services.worker.cluster import ClusterMember

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSettings:
    """How a cluster-mode worker joins the registry (built from WorkerSettings, which holds the defaults)."""

    registry_address: str
    admin_key: str
    serve_models: tuple[str, ...]
    #: 0: the registry's default.
    lease_ttl_s: int
    #: Address routers dial; None: the bound host:port.
    advertise_address: str | None
    #: Directories whose python handlers may run (cluster mode); empty: none allowed.
    trusted_repositories: tuple[Path, ...]
    #: Directories artifacts may be read from (cluster mode); empty: any local path.
    artifact_roots: tuple[Path, ...]
    #: Seconds a version may take to load and warm up before it is refused (cluster mode).
    load_timeout_s: float
    #: Serve inference to any caller, not only router and admin keys (loudly logged).
    open_inference: bool = False
    #: How to dial the registry over TLS; None: plaintext.
    registry_tls: ClientTls | None = None

    @classmethod
    def from_worker_settings(cls, settings: WorkerSettings, registry_tls: ClientTls | None = None) -> ClusterSettings:
        assert settings.registry is not None
        return cls(
            registry_address=settings.registry,
            admin_key=settings.admin_key,
            serve_models=settings.serve,
            lease_ttl_s=settings.lease_ttl_s,
            advertise_address=settings.advertise,
            trusted_repositories=tuple(p.resolve() for p in settings.trusted_repository),
            artifact_roots=tuple(p.resolve() for p in settings.artifact_root),
            load_timeout_s=settings.load_timeout_s,
            open_inference=settings.open_inference,
            registry_tls=registry_tls,
        )


class WorkerApp:
    name = "worker"
    service_names = (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,)

    def __init__(
        self,
        repository: Path | None = None,
        only_models: set[str] | None = None,
        cluster: ClusterSettings | None = None,
        strict: bool = False,
        admission: AdmissionSettings | None = None,
        engine_nice: int = 0,
    ) -> None:
        trusted = cluster.trusted_repositories if cluster is not None and repository is None else None
        admission = admission or AdmissionSettings()
        self.models = ModelManager(trusted_roots=trusted, admission=admission, engine_nice=engine_nice)
        # The edge counts calls (process and version bounds); each version's batcher,
        # which knows its queue and batch time exactly, does the time bounds.
        edge_admission = dataclasses.replace(admission, max_queue_wait_s=0.0, deadline_aware=False)
        self.servicer = WorkerServicer(self.models, Admission("worker", edge_admission))
        self._repository = repository
        self._only = only_models
        self._cluster_settings = cluster
        self._strict = strict
        self._cluster: ClusterMember | None = None
        self._drift = None
        self.bound_address = ""
        # Standalone workers (no registry, so no key table) are open; cluster workers serve
        # routers and admins only unless told otherwise.
        self.guard = InferenceGuard(open_mode=cluster is None or cluster.open_inference)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((self.guard.wrap(self.servicer.handler()),))

    async def start(self) -> None:
        self.guard.log_mode(self.bound_address)
        if self._repository is not None:
            await self._load_repository(self._repository)
        if self._cluster_settings is not None:
            from services.worker.cluster import ClusterMember

            settings = self._cluster_settings
            self._cluster = ClusterMember(
                registry_address=settings.registry_address,
                admin_key=settings.admin_key,
                serve_models=list(settings.serve_models),
                host=self.models,
                advertise_address=settings.advertise_address or self.bound_address,
                lease_ttl_s=settings.lease_ttl_s,
                artifact_roots=settings.artifact_roots,
                load_timeout_s=settings.load_timeout_s,
                on_keys=self.guard.update,
                registry_tls=settings.registry_tls,
            )
            await self._cluster.start()
            self._drift = _drift_reporter(settings)
            # Health stays NOT_SERVING (and the readiness line unprinted) until the first
            # routing table has been reconciled: every assigned version loaded or failed.
            await self._cluster.synced.wait()
        # What start-up built (torch, the engines, gRPC) lives as long as the process: frozen
        # out of the collector, a full collection scans only what requests allocate, instead
        # of stalling the event loop (and every refusal under overload) for tens of ms.
        gc.freeze()

    async def _load_repository(self, repository: Path) -> None:
        """Load every version; unless strict, a version that fails is logged and left UNAVAILABLE.

        Failed versions stay in the manager with their reason, so ModelReady answers false and
        RepositoryIndex lists them as UNAVAILABLE with the error; the good ones are served.
        Strict mode (``--strict``) keeps all-or-nothing: the first failure stops the worker.
        """
        skipped: list[str] = []

        def bad_model(problem: str) -> None:
            logger.error("not serving %s", problem)
            skipped.append(problem)

        entries = scan_repository(repository, self._only, None if self._strict else bad_model)
        failed = 0
        for entry in entries:
            try:
                await self.models.load_version(entry.model, entry.version, entry.version_dir, entry.config)
            except Exception as exc:
                if self._strict:
                    raise ModelConfigError(
                        f"{entry.model} version {entry.version}: {exc} (--strict: not serving any model)"
                    ) from None
                failed += 1  # ModelManager logged it and recorded the version as UNAVAILABLE
        ready = sum(v.ready for versions in self.models.models().values() for v in versions.values())
        if not ready:
            raise ModelConfigError(f"{repository}: no model version could be loaded; see the errors above")
        if failed or skipped:
            logger.warning("serving %d version(s); %d failed to load and %d were skipped (see the errors above)",
                           ready, failed, len(skipped))

    async def drain(self) -> None:
        self.servicer.draining = True
        if self._drift is not None:
            await self._drift.stop()
        if self._cluster is not None:
            await self._cluster.stop()
        # After deregistering, so routers have moved on before their streams end.
        self.servicer.end_streams()

    async def close(self) -> None:
        await self.models.drain()
        await self.models.close()


def _drift_reporter(settings: ClusterSettings):
    """Cluster mode: report drift window counts to the registry's Monitor service."""
    from services.monitoring.client import MonitorClient
    from services.monitoring.observer import MONITORS
    from services.monitoring.reporter import DriftReporter

    client = MonitorClient(settings.registry_address, settings.admin_key, tls=settings.registry_tls)
    reporter = DriftReporter(client, MONITORS)
    reporter.start()
    return reporter
