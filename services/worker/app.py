"""The worker as a ServiceApp: serve a local repository, or what the registry assigns."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.gen.inference import grpc_service_pb2 as pb
from services.worker.models import ModelManager
from services.worker.repository import scan_repository
from services.worker.servicer import WorkerServicer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSettings:
    registry_address: str
    admin_key: str
    serve_models: tuple[str, ...]
    lease_ttl_s: int = 0
    #: Address routers dial; defaults to the bound host:port.
    advertise_address: str | None = None
    #: Directories whose python handlers may run (cluster mode); empty: none allowed.
    trusted_repositories: tuple[Path, ...] = ()


class WorkerApp:
    name = "worker"
    service_names = (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,)

    def __init__(
        self,
        repository: Path | None = None,
        only_models: set[str] | None = None,
        cluster: ClusterSettings | None = None,
    ) -> None:
        trusted = cluster.trusted_repositories if cluster is not None and repository is None else None
        self.models = ModelManager(trusted_roots=trusted)
        self.servicer = WorkerServicer(self.models)
        self._repository = repository
        self._only = only_models
        self._cluster_settings = cluster
        self._cluster = None
        self.bound_address = ""

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((self.servicer.handler(),))

    async def start(self) -> None:
        if self._repository is not None:
            for entry in scan_repository(self._repository, self._only):
                await self.models.load_version(entry.model, entry.version, entry.version_dir, entry.config)
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
            )
            await self._cluster.start()

    async def drain(self) -> None:
        self.servicer.draining = True
        if self._cluster is not None:
            await self._cluster.stop()
        # After deregistering, so routers have moved on before their streams end.
        self.servicer.end_streams()

    async def close(self) -> None:
        await self.models.drain()
        await self.models.close()
