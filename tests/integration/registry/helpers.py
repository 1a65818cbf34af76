"""Small helpers shared by the registry tests: configs, artifacts, polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from services.common import artifacts
from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb

T = TypeVar("T")

CONFIG_YAML = """\
backend: onnx
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [4]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
dynamic_batching: {max_queue_delay_us: 500, preferred_batch_sizes: [4, 8]}
"""


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_artifact(directory: Path, content: bytes = b"weights") -> tuple[str, str]:
    """A one-file artifact: its file:// URI and sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    path.write_bytes(content)
    return artifacts.uri_for(path), artifacts.sha256_of(path)


async def register_model(
    client: RegistryClient, tmp_path: Path, model: str, versions: int = 2, state: int = rpb.STAGED
) -> None:
    for version in range(1, versions + 1):
        uri, digest = make_artifact(tmp_path / model / str(version), f"{model}-{version}".encode())
        await client.register_model_version(model, version, uri, digest, CONFIG_YAML, state)


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout_s: float = 30.0, what: str = ""
) -> T:
    """Poll ``probe`` until ``check`` passes (a bound for a hung system, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s: {what or check}; last value: {value}")
        await asyncio.sleep(0.1)


class Watcher:
    """Collects every routing table a client's watch() yields, in a background task."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.tables: list[rpb.RoutingTable] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for table in self.client.watch(min_backoff_s=0.05, max_backoff_s=0.5):
            self.tables.append(table)
            self._changed.set()

    @property
    def revisions(self) -> list[int]:
        return [t.revision for t in self.tables]

    async def wait_for(self, check: Callable[[rpb.RoutingTable], bool], timeout_s: float = 30.0) -> rpb.RoutingTable:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.tables and check(self.tables[-1]):
                return self.tables[-1]
            if self._task.done():
                self._task.result()
                raise AssertionError("watch ended")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = self.tables[-1].revision if self.tables else None
                raise AssertionError(f"watcher did not see the change within {timeout_s}s (last revision {last})")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass

    async def wait_revision(self, revision: int, timeout_s: float = 30.0) -> rpb.RoutingTable:
        return await self.wait_for(lambda t: t.revision >= revision, timeout_s)

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass


def policy_of(table: rpb.RoutingTable, model: str) -> rpb.TrafficPolicy | None:
    for m in table.models:
        if m.name == model:
            return m.policy
    return None
