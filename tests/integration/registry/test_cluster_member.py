"""ClusterMember against a real registry, with a tiny in-test ModelHost."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.common.model_config import ModelConfig
from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.worker.cluster import ClusterMember
from tests.integration.registry.helpers import CONFIG_YAML, eventually, make_artifact, unique


class FakeHost:
    """Records loads and unloads; a version is ready once loaded."""

    def __init__(self) -> None:
        self.loaded: dict[tuple[str, str], tuple[Path, ModelConfig]] = {}
        self.unloaded: list[tuple[str, str]] = []
        self.fail: set[tuple[str, str]] = set()

    async def load_version(self, model: str, version: str, version_dir: Path, config: ModelConfig) -> None:
        await asyncio.sleep(0)
        if (model, version) in self.fail:
            raise RuntimeError("engine exploded")
        self.loaded[(model, version)] = (version_dir, config)

    async def unload_version(self, model: str, version: str) -> None:
        self.loaded.pop((model, version), None)
        self.unloaded.append((model, version))

    def version_statuses(self) -> list[rpb.VersionStatus]:
        return [rpb.VersionStatus(model=m, version=v, ready=True) for m, v in self.loaded]


def statuses_of(workers: list[rpb.Worker], worker_id: str) -> dict[str, rpb.VersionStatus]:
    for worker in workers:
        if worker.worker_id == worker_id:
            return {f"{s.model}/{s.version}": s for s in worker.versions}
    return {}


async def test_member_loads_verifies_unloads_and_deregisters(registry, admin, tmp_path):
    model, other = unique(), unique()
    host = FakeHost()
    async with RegistryClient(registry.address, admin.key) as client:
        uri1, sha1 = make_artifact(tmp_path / "1", b"one")
        await client.register_model_version(model, 1, uri1, sha1, CONFIG_YAML)
        uri_other, sha_other = make_artifact(tmp_path / "o", b"other")
        await client.register_model_version(other, 1, uri_other, sha_other, CONFIG_YAML)  # not served

        member = ClusterMember(registry.address, admin.key, [model], host, "127.0.0.1:7100", lease_ttl_s=30)
        await member.start()
        try:
            assert await member.wait_synced(30)
            workers = await eventually(
                client.list_workers, lambda ws: statuses_of(ws, member.worker_id).get(f"{model}/1", None)
                is not None and statuses_of(ws, member.worker_id)[f"{model}/1"].ready, what="v1 ready",
            )
            assert set(statuses_of(workers, member.worker_id)) == {f"{model}/1"}
            version_dir, config = host.loaded[(model, "1")]
            assert version_dir == tmp_path / "1"
            assert config.artifact_name == "model.onnx" and config.max_batch_size == 8

            # A version whose artifact is not the registered one is refused and reported.
            uri2, _ = make_artifact(tmp_path / "2", b"two")
            await client.register_model_version(model, 2, uri2, "f" * 64, CONFIG_YAML)
            workers = await eventually(
                client.list_workers, lambda ws: "sha256 mismatch" in statuses_of(ws, member.worker_id).get(
                    f"{model}/2", rpb.VersionStatus()).error, what="v2 refused",
            )
            assert not statuses_of(workers, member.worker_id)[f"{model}/2"].ready
            assert (model, "2") not in host.loaded

            # A version whose load fails is reported with the engine's error.
            uri3, sha3 = make_artifact(tmp_path / "3", b"three")
            host.fail.add((model, "3"))
            await client.register_model_version(model, 3, uri3, sha3, CONFIG_YAML)
            await eventually(
                client.list_workers, lambda ws: "engine exploded" in statuses_of(ws, member.worker_id).get(
                    f"{model}/3", rpb.VersionStatus()).error, what="v3 failed",
            )

            # Archived: unloaded, and its refusal is no longer reported.
            await client.set_version_state(model, 2, rpb.ARCHIVED)
            await client.set_version_state(model, 3, rpb.ARCHIVED)
            await client.set_weights(model, {"1": 100})
            await client.register_model_version(model, 4, uri1, sha1, CONFIG_YAML)
            await eventually(
                client.list_workers, lambda ws: set(statuses_of(ws, member.worker_id)) == {f"{model}/1", f"{model}/4"}
                and all(s.ready for s in statuses_of(ws, member.worker_id).values()), what="v4 in, v2/v3 out",
            )
            await client.set_weights(model, {"4": 100})
            await client.set_version_state(model, 1, rpb.ARCHIVED)
            await eventually(lambda: asyncio.sleep(0, host.unloaded), lambda u: (model, "1") in u, what="v1 unloaded")
            assert (model, "3") in host.unloaded  # its failed load was cleared from the host too
        finally:
            worker_id = member.worker_id
            await member.stop()
        assert worker_id not in {w.worker_id for w in await client.list_workers()}
