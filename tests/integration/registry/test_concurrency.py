"""20 concurrent admin clients: every acknowledged write lands, each bumps the revision once."""

from __future__ import annotations

import asyncio

from services.common.registry_client import RegistryClient
from tests.integration.registry.helpers import Watcher, policy_of, register_model, unique

CLIENTS = 20
WRITES_EACH = 5


async def test_concurrent_policy_writes_lose_nothing(registry, admin, tmp_path):
    models = [unique(f"c{i}") for i in range(CLIENTS)]
    async with RegistryClient(registry.address, admin.key) as setup:
        for model in models:
            await register_model(setup, tmp_path, model, versions=2)
        start = (await anext(aiter(setup.watch()))).revision
    watcher = Watcher(RegistryClient(registry.address, admin.key))

    async def writer(model: str) -> list[tuple[int, int]]:
        acked = []
        async with RegistryClient(registry.address, admin.key) as client:
            for n in range(WRITES_EACH):
                weight = 10 + n  # distinct per write, so the final state names the last one
                await client.set_weights(model, {"1": weight, "2": 100 - weight})
                acked.append((client.last_revision, weight))
        return acked

    results = await asyncio.gather(*(writer(m) for m in models))

    revisions = sorted(rev for acked in results for rev, _ in acked)
    # One revision per write, no gaps and no duplicates: nothing lost or applied twice.
    assert revisions == list(range(start + 1, start + CLIENTS * WRITES_EACH + 1))
    final = await watcher.wait_revision(revisions[-1])
    async with RegistryClient(registry.address, admin.key) as reader:
        for model, acked in zip(models, results, strict=True):
            last_weight = acked[-1][1]
            policy = await reader.get_traffic_policy(model)
            assert dict(policy.weights) == {"1": last_weight, "2": 100 - last_weight}
            assert dict(policy_of(final, model).weights) == dict(policy.weights)
    # The watcher saw revisions in strictly increasing order.
    assert watcher.revisions == sorted(set(watcher.revisions))
    await watcher.close()
    await watcher.client.close()
