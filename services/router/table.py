"""The routing table as the router holds it: an immutable snapshot swapped whole.

Built once per registry revision from ``shunter.registry.v1.RoutingTable`` into the
lookups the hot path needs (model → versions → ready workers, key hash → key), so a
request costs dictionary lookups only. A new revision replaces the snapshot in one
assignment; requests in flight finish on the snapshot they started with.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.api_keys import DATA_PLANE_ROLES, role_of
from services.common.model_description import version_order
from services.common.signature import Signature, TensorSpec
from services.gen.shunter.registry.v1 import registry_pb2
from services.router.splitter import Split


def signature_from_proto(proto: registry_pb2.Signature) -> Signature:
    def specs(items) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)

    return Signature(inputs=specs(proto.inputs), outputs=specs(proto.outputs), max_batch_size=proto.max_batch_size)


@dataclass(frozen=True, slots=True)
class VersionEntry:
    model: str
    version: str
    proto: registry_pb2.ModelVersion
    signature: Signature
    #: Addresses of workers that report this version ready.
    workers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    versions: dict[str, VersionEntry]
    #: Version names in ascending order.
    ordered: tuple[str, ...]
    policy: registry_pb2.TrafficPolicy
    split: Split
    #: Lower-cased metadata key whose value makes the split sticky; "" for random.
    sticky_header: str
    #: The version metadata and config describe when a request names none.
    default_version: str


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key_id: str
    tenant: str
    #: Models this key may use; empty means all.
    models: frozenset[str]
    per_second: float
    burst: int
    per_model: bool
    admin: bool


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    revision: int
    models: dict[str, ModelEntry]
    #: sha256 hex of the whole key → key.
    keys: dict[str, KeyEntry]
    #: Every worker address in the table (channels to others are closed).
    worker_addresses: frozenset[str]

    @classmethod
    def empty(cls) -> RoutingSnapshot:
        return cls(revision=0, models={}, keys={}, worker_addresses=frozenset())


def build_snapshot(table: registry_pb2.RoutingTable) -> RoutingSnapshot:
    ready: dict[tuple[str, str], list[str]] = {}
    addresses: set[str] = set()
    for worker in table.workers:
        addresses.add(worker.address)
        for status in worker.versions:
            if status.ready:
                ready.setdefault((status.model, status.version), []).append(worker.address)
    models: dict[str, ModelEntry] = {}
    for model in table.models:
        versions = {
            v.version: VersionEntry(
                model=model.name,
                version=v.version,
                proto=v,
                signature=signature_from_proto(v.signature),
                workers=tuple(sorted(ready.get((model.name, v.version), ()))),
            )
            for v in model.versions
            if v.state != registry_pb2.ARCHIVED
        }
        if not versions:
            continue
        ordered = tuple(sorted(versions, key=version_order))
        policy = model.policy
        weights = {v: w for v, w in policy.weights.items() if v in versions}
        split = Split.from_weights(weights)
        if split.weighted:
            default = max(split.weighted, key=lambda item: (item[1], version_order(item[0])))[0]
        else:
            production = [v for v in ordered if versions[v].proto.state == registry_pb2.PRODUCTION]
            default = (production or list(ordered))[-1]
        models[model.name] = ModelEntry(
            name=model.name,
            versions=versions,
            ordered=ordered,
            policy=policy,
            split=split,
            sticky_header=policy.sticky_header.lower(),
            default_version=default,
        )
    keys = {
        k.secret_sha256.lower(): KeyEntry(
            key_id=k.key_id,
            tenant=k.tenant,
            models=frozenset(k.models),
            per_second=k.rate.per_second,
            burst=k.rate.burst,
            per_model=k.rate.per_model,
            admin=k.admin,
        )
        for k in table.keys
        # Service keys (worker, router roles) buy no inference here: only client and admin keys.
        if not k.revoked and k.secret_sha256 and role_of(k) in DATA_PLANE_ROLES
    }
    return RoutingSnapshot(
        revision=table.revision, models=models, keys=keys, worker_addresses=frozenset(addresses)
    )
