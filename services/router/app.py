"""The router as a ServiceApp: follow the registry's routing table, serve clients.

The routing table arrives over the registry's ``WatchRoutingTable`` stream; each
snapshot replaces the last in one assignment. When the stream breaks the router keeps
serving on the table it holds and reconnects in the background (DESIGN §1).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable

import grpc

from services.common.api_keys import auth_metadata
from services.gen.shunter.registry.v1 import registry_pb2, registry_pb2_grpc
from services.router import metrics
from services.router.core import Router
from services.router.servicer import SERVICE_NAME, RouterServicer
from services.router.settings import RouterSettings
from services.router.table import build_snapshot

logger = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0

#: A source of routing tables: yields a full table at once and after every change.
TableSource = Callable[[], AsyncIterator[registry_pb2.RoutingTable]]


def registry_watch(settings: RouterSettings) -> TableSource:
    """Routing tables from the registry's watch stream; the stream ends when it breaks.

    Reconnection is ``RouterApp``'s loop, so the router knows (and reports) when it is
    serving on a stale table. Several registry addresses (comma-separated) are tried in turn.
    """
    addresses = [a.strip() for a in settings.registry.split(",") if a.strip()]
    turn = 0

    async def source() -> AsyncIterator[registry_pb2.RoutingTable]:
        nonlocal turn
        address = addresses[turn % len(addresses)]
        turn += 1
        async with grpc.aio.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            call = stub.WatchRoutingTable(
                registry_pb2.WatchRoutingTableRequest(), metadata=auth_metadata(settings.admin_key)
            )
            try:
                async for table in call:
                    yield table
            finally:
                call.cancel()

    return source


class RouterApp:
    name = "router"
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: RouterSettings, table_source: TableSource | None = None) -> None:
        self.settings = settings
        self.router = Router(settings)
        self.servicer = RouterServicer(self.router)
        self._source = table_source or registry_watch(settings)
        self._watcher: asyncio.Task | None = None
        self._first_table = asyncio.Event()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((self.servicer.handler(),))

    async def start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._follow())
        try:
            await asyncio.wait_for(self._first_table.wait(), self.settings.initial_table_timeout_s)
        except TimeoutError:
            logger.warning(
                "no routing table from %s after %.0fs; serving not-ready until one arrives",
                self.settings.registry,
                self.settings.initial_table_timeout_s,
            )

    async def _follow(self) -> None:
        """Install every table the source yields; reconnect with jittered backoff forever."""
        backoff = MIN_BACKOFF_S
        failures = 0
        while True:
            error = "stream ended"
            try:
                async for table in self._source():
                    metrics.REGISTRY_CONNECTED.set(1)
                    backoff, failures = MIN_BACKOFF_S, 0
                    if table.revision != self.router.snapshot.revision:
                        self.router.install(build_snapshot(table))
                        logger.info("routing table revision %d installed", table.revision)
                    self._first_table.set()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:
                logger.exception("routing table watch failed")
                error = repr(exc)
            metrics.REGISTRY_CONNECTED.set(0)
            failures += 1
            if failures == 1 or failures % 50 == 0:
                logger.warning("registry watch lost (%s); serving on revision %d, reconnecting",
                               error, self.router.snapshot.revision)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def drain(self) -> None:
        self.servicer.draining = True

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self.router.close()
