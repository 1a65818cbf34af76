"""Writing a whole catalogue into the store: the restore after data loss, and `import`.

Both add a snapshot to what Redis holds now in one transaction. They differ on a clash:
a **restore** (the registry's own last snapshot, newer than what a data-losing Redis
kept) overwrites, while an **import** (a backup file, maybe older) never changes what
is there and is refused whole when a version or key in the file differs from the one
in Redis (``conflicts``).
"""

from __future__ import annotations

from typing import Any

from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry.catalogue import Catalogue
from services.registry.scripts import KeyLayout


def status_record(worker: rpb.Worker) -> bytes:
    """The ``worker_status`` hash value: the worker's per-version readiness only."""
    return rpb.Worker(versions=worker.versions).SerializeToString()


def conflicts(source: Catalogue, present: Catalogue) -> list[str]:
    """Versions and keys of ``source`` that Redis holds with other content."""
    found = []
    for model, versions in sorted(source.versions.items()):
        for number, version in sorted(versions.items()):
            there = present.versions.get(model, {}).get(number)
            if there is not None and (there.sha256, there.artifact_uri) != (version.sha256, version.artifact_uri):
                found.append(
                    f"{model} version {number} is registered with sha256 {there.sha256[:12]}… "
                    f"({there.artifact_uri}), the file has {version.sha256[:12]}… ({version.artifact_uri})"
                )
    for key_id, key in sorted(source.keys.items()):
        there_key = present.keys.get(key_id)
        if there_key is not None and there_key.secret_sha256 != key.secret_sha256:
            found.append(f"key {key_id} exists with another secret")
    return found


def queue_merge(
    pipe: Any,
    keys: KeyLayout,
    source: Catalogue,
    present: Catalogue,
    *,
    overwrite: bool,
    leases: bool,
    fingerprint: Any,
) -> int:
    """Queue on ``pipe`` (in MULTI) the writes that add ``source`` to ``present``.

    With ``leases``, worker leases Redis lacks are written back with their old expiry
    (``fingerprint`` computes each one's routing fingerprint). Returns how many records
    it queued.
    """
    queued = 0
    for model, versions in source.versions.items():
        pipe.sadd(keys.models, model)
        for number, version in versions.items():
            if overwrite or number not in present.versions.get(model, {}):
                pipe.hset(keys.versions(model), number, version.SerializeToString())
                queued += 1
    for model, policy in source.policies.items():
        if overwrite or model not in present.policies:
            pipe.hset(keys.policies, model, policy.SerializeToString())
            queued += 1
    for key_id, key in source.keys.items():
        if overwrite or key_id not in present.keys:
            pipe.hset(keys.keys, key_id, key.SerializeToString())
            pipe.hset(keys.key_hashes, key.secret_sha256, key_id)
            queued += 1
    if leases:
        for worker_id, worker in source.workers.items():
            ttl = source.lease_ttl_ms.get(worker_id)
            if worker_id in present.workers or not ttl:
                continue  # a worker that registered again since keeps its new lease
            pipe.hset(keys.worker_addr, worker_id, worker.address)
            pipe.hset(keys.worker_status, worker_id, status_record(worker))
            pipe.hset(keys.worker_fp, worker_id, fingerprint(worker.versions))
            pipe.hset(keys.worker_ttl, worker_id, ttl)
            pipe.zadd(keys.leases, {worker_id: worker.expires_at_ms})
            queued += 1
    return queued
