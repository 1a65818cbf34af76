"""The router as a ServiceApp: follow the registry's routing table, serve clients.

The routing table arrives through ``RegistryClient.watch`` (reconnects with capped,
jittered backoff; keepalive pings notice a partitioned registry in seconds); its
connection-state hook drives ``shunter_router_registry_connected`` and the log lines
that say the router serves on a stale table. Each snapshot replaces the last in one
assignment. When the stream breaks the router keeps serving on the table it holds
(DESIGN §1).

A key the registry refuses is fatal at start-up (``start`` raises, the CLI exits 2 with
the registry's message); once serving, the router keeps its table and asks again every
``BAD_KEY_RETRY_S``, so revoking a router's key does not take routing down with it.

Two guards keep a registry that lost data from emptying the router: a table whose
revision went back and that lacks models or keys the router holds is not installed
(the registry's Redis was wiped and no registry remembered it; an import brings the
table back), and a version whose workers all vanished from one table keeps them for a
while (``hold.WorkerHold``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from services.common import background
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.registry_client import RegistryClient, StateHook
from services.gen.shunter.registry.v1 import registry_pb2
from services.router import metrics
from services.router.core import Router
from services.router.hold import WorkerHold
from services.router.servicer import SERVICE_NAME, RouterServicer
from services.router.settings import RouterSettings
from services.router.table import RoutingSnapshot, build_snapshot

logger = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
#: How often a serving router asks again after the registry refused its key.
BAD_KEY_RETRY_S = 10.0

#: A source of routing tables: ``source(on_state)`` yields a full table at once and after
#: every change, reconnecting by itself, and raises Unauthenticated/PermissionDenied for a
#: key the registry refuses.
TableSource = Callable[[StateHook], AsyncIterator[registry_pb2.RoutingTable]]


class RegistryWatch:
    """The default ``TableSource``: the registry's watch (several addresses, comma-separated,
    tried in turn)."""

    def __init__(self, settings: RouterSettings) -> None:
        self.client = RegistryClient(settings.registry, settings.admin_key or None, tls=settings.client_tls)

    def __call__(self, on_state: StateHook) -> AsyncIterator[registry_pb2.RoutingTable]:
        return self.client.watch(min_backoff_s=MIN_BACKOFF_S, max_backoff_s=MAX_BACKOFF_S, on_state=on_state)

    async def close(self) -> None:
        await self.client.close()


def lost_from(current: RoutingSnapshot, new: RoutingSnapshot) -> list[str]:
    """Models and keys ``current`` has that ``new`` lacks, when ``new``'s revision went back.

    Empty when the revision did not go back: a table that moved forward is the registry's
    truth, whatever it removed (archived versions, revoked keys).
    """
    if current.revision == 0 or new.revision >= current.revision:
        return []
    lost = [f"model {name}" for name in sorted(current.models) if name not in new.models]
    keys = [entry.key_id for digest, entry in current.keys.items() if digest not in new.keys]
    if keys:
        lost.append(f"{len(keys)} key(s)")
    return lost


class RouterApp:
    name = "router"
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: RouterSettings, table_source: TableSource | None = None) -> None:
        self.settings = settings
        self.router = Router(settings)
        self.servicer = RouterServicer(self.router)
        self._source = table_source or RegistryWatch(settings)
        self._hold = WorkerHold()
        self._watcher: asyncio.Task | None = None
        self._first_table = asyncio.Event()
        self._failures = 0
        self._refused_revision: int | None = None

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((self.servicer.handler(),))

    async def start(self) -> None:
        """Wait for the first table (bounded); raise for a key the registry refuses."""
        self._watcher = asyncio.get_running_loop().create_task(self._follow())
        self.router.version_stats.start()
        first = asyncio.ensure_future(self._first_table.wait())
        try:
            await asyncio.wait({first, self._watcher}, timeout=self.settings.initial_table_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()
        if self._watcher.done():
            self._watcher.result()  # raises the refusal
        if not self._first_table.is_set():
            logger.warning(
                "no routing table from %s after %.0fs; serving not-ready until one arrives",
                self.settings.registry,
                self.settings.initial_table_timeout_s,
            )
        # What start-up built (modules, gRPC, the table) lives as long as the process: frozen
        # out of the collector, a full collection scans only what requests allocate. Unfrozen,
        # each took 34-75 ms under 10x load (one every few seconds), stalling every request the
        # router held: most of its refusal p99 (95 ms; 10-14 ms frozen, RELIABILITY.md).
        gc.freeze()

    def _on_state(self, connected: bool, detail: str) -> None:
        metrics.REGISTRY_CONNECTED.set(1 if connected else 0)
        if connected:
            if self._failures:
                logger.info("registry watch to %s is back after %d failed attempt(s)", detail, self._failures)
            self._failures = 0
            return
        self._failures += 1
        if self._failures == 1 or self._failures % 50 == 0:
            logger.warning("registry watch lost (%s); serving on revision %d, reconnecting",
                           detail, self.router.snapshot.revision)

    async def _follow(self) -> None:
        """Install every table the source yields, for as long as the router runs."""
        while True:
            try:
                async for table in self._source(self._on_state):
                    self._install(table)
                    self._first_table.set()
            except (Unauthenticated, PermissionDenied) as exc:
                metrics.REGISTRY_CONNECTED.set(0)
                if not self._first_table.is_set():
                    raise type(exc)(
                        f"the registry at {self.settings.registry} refuses the router's key: {exc.message} "
                        "(give a router-role or admin key with --admin-key, --admin-key-file or $SHUNTER_ADMIN_KEY)"
                    ) from None
                logger.error("the registry refuses the router's key (%s); serving on revision %d, "
                             "asking again in %.0f s", exc.message, self.router.snapshot.revision, BAD_KEY_RETRY_S)
                await asyncio.sleep(BAD_KEY_RETRY_S)

    def _install(self, table: registry_pb2.RoutingTable) -> None:
        current = self.router.snapshot
        if table.revision == current.revision and current.revision:
            return
        new = build_snapshot(table)
        lost = lost_from(current, new)
        if lost:
            metrics.TABLES_REFUSED.inc()
            if self._refused_revision is None:
                logger.error(
                    "routing table revision %d went back from %d and lacks %s: the registry's Redis lost "
                    "its data; keeping revision %d until the registry has them again (shunter registry import)",
                    table.revision, current.revision, ", ".join(lost[:5]), current.revision,
                )
            self._refused_revision = table.revision
            return
        self._refused_revision = None
        new = self._hold.apply(current, new)
        metrics.WORKERS_HELD.set(self._hold.holding)
        self.router.install(new)
        logger.info("routing table revision %d installed", table.revision)

    async def drain(self) -> None:
        self.servicer.draining = True

    async def close(self) -> None:
        await background.stop(self._watcher)  # bounded: shutdown must not wait on the registry
        if isinstance(self._source, RegistryWatch):
            await self._source.close()
        await self.router.close()
