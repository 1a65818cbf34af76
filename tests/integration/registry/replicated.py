"""Shared by the Redis Cluster and Sentinel tests: registry write load across a failover,
and the check that no acknowledged write was lost."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from services.common.errors import ShunterError
from services.common.registry_client import RegistryClient
from tests.support.processes import ServiceProcess, start_service

#: For the failovers that kill a primary (marked `slow` too): scripts/reliability runs them
#: (SHUNTER_REDIS_FAILOVER=1), scripts/test skips them.
failover_only = pytest.mark.skipif(
    not os.environ.get("SHUNTER_REDIS_FAILOVER"),
    reason="a primary-kill failover; scripts/reliability runs it (SHUNTER_REDIS_FAILOVER=1)",
)


def start_registry(url: str, admin, *extra: str) -> ServiceProcess:
    """A registry on the Redis at ``url`` (any form redis_connect takes)."""
    return start_service(["registry", "--redis-url", url, "--port", "0", "--admin-key-file", str(admin.path),
                          "--grace-s", "5", *extra])


@dataclass
class WriteLoad:
    """Writers creating API keys in a loop; every acknowledged key id is recorded."""

    address: str
    admin_key: str
    writers: int = 4
    acknowledged: set[str] = field(default_factory=set)
    refused: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer(i)) for i in range(self.writers)]

    async def _writer(self, index: int) -> None:
        async with RegistryClient(self.address, self.admin_key, timeout_s=5) as client:
            while not self.stop.is_set():
                try:
                    reply = await client.create_api_key(f"load-{index}")
                except ShunterError:  # UNAVAILABLE during the failover: not acknowledged
                    self.refused += 1
                    await asyncio.sleep(0.05)
                    continue
                self.acknowledged.add(reply.key.key_id)
                await asyncio.sleep(0.005)

    async def until(self, count: int, timeout_s: float = 60.0) -> None:
        """Until ``count`` more writes have been acknowledged (a bound for a hung system)."""
        target = len(self.acknowledged) + count
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(self.acknowledged) < target:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"only {len(self.acknowledged)} of {target} writes acknowledged in {timeout_s}s")
            await asyncio.sleep(0.05)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks)


async def lost_writes(address: str, admin_key: str, acknowledged: set[str]) -> set[str]:
    """Acknowledged key ids the registry does not hold (read straight from Redis)."""
    async with RegistryClient(address, admin_key) as client:
        present = {k.key_id for k in await client.list_api_keys()}
    return acknowledged - present


async def across_failover(load: WriteLoad, fail_over: Callable[[], Awaitable[None]], before: int = 30,
                          after: int = 30) -> None:
    """Run ``load``, fail over once ``before`` writes were acknowledged, go on until ``after`` more."""
    load.start()
    try:
        await load.until(before)
        await fail_over()
        await load.until(after)
    finally:
        await load.finish()
