"""One consistent snapshot of everything the registry holds, read from Redis at once.

A ``Catalogue`` is immutable: the store swaps in a new one after every change it sees,
and watchers, reads and auth all work from whichever snapshot is current — which is
also what they keep serving while Redis is down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from services.gen.shunter.registry.v1 import registry_pb2 as rpb


@dataclass(frozen=True)
class Catalogue:
    revision: int
    #: model -> version -> ModelVersion (archived ones included).
    versions: dict[str, dict[str, rpb.ModelVersion]] = field(default_factory=dict)
    policies: dict[str, rpb.TrafficPolicy] = field(default_factory=dict)
    #: Live leases, with ``expires_at_ms`` filled in (in a lease grace period, also the
    #: expired ones not yet swept).
    workers: dict[str, rpb.Worker] = field(default_factory=dict)
    #: key id -> ApiKey (revoked ones included; never a secret, only its hash).
    keys: dict[str, rpb.ApiKey] = field(default_factory=dict)
    #: The store's identity; "" when Redis holds none (it lost its data, or never had any).
    epoch: str = ""
    #: worker id -> its lease TTL in ms (what a restore needs to write a lease back).
    lease_ttl_ms: dict[str, int] = field(default_factory=dict)
    #: Redis time (ms) when this snapshot was read.
    read_at_ms: int = 0

    def missing_from(self, other: Catalogue) -> list[str]:
        """What this snapshot holds that ``other`` lacks: versions and keys, by name.

        Versions and keys are never deleted (only archived or revoked), so anything listed
        here was lost by the store ``other`` was read from.
        """
        lost = [
            f"{model} version {number}"
            for model, versions in sorted(self.versions.items())
            for number in sorted(versions)
            if number not in other.versions.get(model, {})
        ]
        lost += [f"key {key_id}" for key_id in sorted(self.keys) if key_id not in other.keys]
        return lost

    def counts(self) -> str:
        """``"M models, V versions, K keys"``, for log lines and CLI output."""
        versions = sum(len(v) for v in self.versions.values())
        return f"{len(self.versions)} models, {versions} versions, {len(self.keys)} keys"

    @cached_property
    def keys_by_hash(self) -> dict[str, rpb.ApiKey]:
        return {key.secret_sha256: key for key in self.keys.values()}

    def model(self, name: str, *, include_archived: bool = True) -> rpb.Model | None:
        versions = self.versions.get(name)
        if not versions:
            return None
        model = rpb.Model(name=name)
        for version in sorted(versions.values(), key=lambda v: int(v.version)):
            if include_archived or version.state != rpb.ARCHIVED:
                model.versions.append(version)
        if name in self.policies:
            model.policy.CopyFrom(self.policies[name])
        else:
            model.policy.model = name
        return model

    def models(self, *, include_archived: bool = True) -> list[rpb.Model]:
        out = []
        for name in sorted(self.versions):
            model = self.model(name, include_archived=include_archived)
            if model is not None and (include_archived or model.versions):
                out.append(model)
        return out

    def sorted_workers(self) -> list[rpb.Worker]:
        return [self.workers[w] for w in sorted(self.workers)]

    def sorted_keys(self) -> list[rpb.ApiKey]:
        return sorted(self.keys.values(), key=lambda k: (k.created_at_ms, k.key_id))

    @cached_property
    def routing_table(self) -> rpb.RoutingTable:
        """What routers and workers follow: non-archived versions, live workers, active keys.

        Optimisation reports stay out: nothing that routes or serves reads them, and every
        watcher would receive them on every change.
        """
        table = rpb.RoutingTable(
            revision=self.revision,
            models=self.models(include_archived=False),
            workers=self.sorted_workers(),
            keys=[key for key in self.sorted_keys() if not key.revoked],
        )
        for model in table.models:
            for version in model.versions:
                version.ClearField("optimize_report")
        return table
