"""The operator records a registry backup holds beside the catalogue (format version 2).

The catalogue (models, versions, policies, keys) is not all the durable state an operator
builds up in the registry's Redis. These are too, and a Redis wipe loses them:

- drift reference profiles (``monitor:profile:{model}:{version}``, `shunter drift baseline`);
- rollout records (the ``rollouts`` hash: each model's last rollout, running or finished);
- each model's rollout decision history (``rollout_history:{model}``);
- each model's traffic audit log (``traffic_audit:{model}``, who changed which policy).

What is left out is state that rebuilds itself or is worth nothing after a wipe: worker
leases and their status (workers register again), the rollout controller's lease and
fencing counter, the routers' statistics windows and shadow samples, drift window counts
(workers report new ones), rate-limit buckets, cached responses and the pub/sub channel.

An import follows the catalogue's rule: it adds what Redis lacks and never changes what is
there (a model whose rollout record or list Redis already holds keeps its own). Two changes
are made to the rollouts it writes, so a restored rollout cannot act on stale grounds:
a running one is imported *paused* (the backup may be hours old; the operator resumes it
with ``shunter rollout resume``), and every one gets fencing token 0, since the controller's
fencing counter started again with the wipe and would otherwise take the restored record for
one written by a newer controller and never touch it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from services.monitoring import windows
from services.monitoring.profile import Profile, ProfileError
from services.registry.rollout import records as rollout_records
from services.registry.rollout.records import RolloutKeys


class RecordsError(ValueError):
    """A records section of a backup that cannot be imported (the message names it)."""


@dataclass(frozen=True)
class Records:
    #: (model, version) -> the version's reference profile.
    profiles: dict[tuple[str, str], mpb.ReferenceProfile] = field(default_factory=dict)
    #: model -> its last rollout.
    rollouts: dict[str, opb.Rollout] = field(default_factory=dict)
    #: model -> its rollout decisions, oldest first.
    history: dict[str, list[opb.Decision]] = field(default_factory=dict)
    #: model -> its traffic policy changes, oldest first.
    audit: dict[str, list[opb.PolicyChange]] = field(default_factory=dict)

    def counts(self) -> str:
        """``"P profiles, R rollouts, D decisions, C policy changes"``, for CLI output."""
        decisions = sum(len(d) for d in self.history.values())
        changes = sum(len(c) for c in self.audit.values())
        return (f"{len(self.profiles)} profiles, {len(self.rollouts)} rollouts, {decisions} decisions, "
                f"{changes} policy changes")


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def to_sections(records: Records) -> dict[str, Any]:
    """The records as the backup document's ``profiles``, ``rollouts``, ``rollout_history``
    and ``traffic_audit`` sections."""
    return {
        "profiles": [_dict(records.profiles[k]) for k in sorted(records.profiles)],
        "rollouts": [_dict(records.rollouts[m]) for m in sorted(records.rollouts)],
        "rollout_history": {m: [_dict(d) for d in records.history[m]] for m in sorted(records.history)},
        "traffic_audit": {m: [_dict(c) for c in records.audit[m]] for m in sorted(records.audit)},
    }


# ---- reading a backup file's sections ----------------------------------------------------


def parse_message(cls: type[Message], record: Any, where: str, error: type[ValueError] = RecordsError) -> Any:
    """One JSON object of a backup file as the message ``cls``; ``error`` names ``where`` it failed."""
    if not isinstance(record, dict):
        raise error(f"{where} must be an object, got {type(record).__name__}")
    try:
        return json_format.ParseDict(record, cls())
    except json_format.ParseError as exc:
        raise error(f"{where}: {exc}") from None


def _section(document: dict[str, Any], name: str, kind: type) -> Any:
    value = document.get(name, kind())
    if not isinstance(value, kind):
        raise RecordsError(f"{name} must be {'a list' if kind is list else 'an object'}, got {type(value).__name__}")
    return value


def _model(versions: dict[str, dict[str, rpb.ModelVersion]], model: str, where: str) -> dict[str, rpb.ModelVersion]:
    if model not in versions:
        raise RecordsError(f"{where} names model {model!r}, which is not among the backup's models")
    return versions[model]


def from_sections(document: dict[str, Any], versions: dict[str, dict[str, rpb.ModelVersion]]) -> Records:
    """The records of a backup document (none in a format version 1 file), each checked
    against the backup's own catalogue ``versions``; RecordsError names the first problem."""
    profiles: dict[tuple[str, str], mpb.ReferenceProfile] = {}
    for index, record in enumerate(_section(document, "profiles", list)):
        profile = parse_message(mpb.ReferenceProfile, record, f"profiles[{index}]")
        where = f"profile of {profile.model} version {profile.version}"
        if profile.version not in _model(versions, profile.model, f"profiles[{index}]"):
            raise RecordsError(f"{where}: the backup has no such version")
        try:
            computed = Profile.from_proto(profile).profile_id
        except ProfileError as exc:
            raise RecordsError(f"{where}: {exc}") from None
        if profile.profile_id != computed:
            raise RecordsError(f"{where}: profile_id {profile.profile_id!r} does not match its bins ({computed})")
        if (profile.model, profile.version) in profiles:
            raise RecordsError(f"{where} appears twice")
        profiles[(profile.model, profile.version)] = profile
    rollouts: dict[str, opb.Rollout] = {}
    for index, record in enumerate(_section(document, "rollouts", list)):
        rollout = parse_message(opb.Rollout, record, f"rollouts[{index}]")
        where = f"rollout of {rollout.model}"
        known = _model(versions, rollout.model, f"rollouts[{index}]")
        for role, number in (("version", rollout.version), ("baseline", rollout.baseline)):
            if number not in known:
                raise RecordsError(f"{where}: its {role} {number!r} is not among the model's versions")
        if rollout.state not in rollout_records.STATE_NAMES:
            raise RecordsError(f"{where}: state {rollout.state} is not a rollout state")
        if not rollout.steps or rollout.step >= len(rollout.steps) or any(s > 100 for s in rollout.steps):
            raise RecordsError(f"{where}: step {rollout.step} of steps {list(rollout.steps)} is not valid")
        if rollout.model in rollouts:
            raise RecordsError(f"{where} appears twice")
        rollouts[rollout.model] = rollout
    history = _lists(document, "rollout_history", opb.Decision, versions)
    audit = _lists(document, "traffic_audit", opb.PolicyChange, versions)
    return Records(profiles, rollouts, history, audit)


def _lists(document: dict[str, Any], name: str, cls: type[Message],
           versions: dict[str, dict[str, rpb.ModelVersion]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for model, entries in _section(document, name, dict).items():
        where = f"{name}[{model!r}]"
        _model(versions, model, where)
        if not isinstance(entries, list):
            raise RecordsError(f"{where} must be a list, got {type(entries).__name__}")
        parsed = [parse_message(cls, entry, f"{where}[{i}]") for i, entry in enumerate(entries)]
        for i, entry in enumerate(parsed):
            if entry.model != model:
                raise RecordsError(f"{where}[{i}] names model {entry.model!r}")
        if parsed:
            out[model] = parsed
    return out


# ---- Redis ------------------------------------------------------------------------------


async def read(redis: Any, rkeys: RolloutKeys, mkeys: windows.Keys,
               versions: dict[str, dict[str, rpb.ModelVersion]]) -> tuple[Records, int]:
    """The records of the catalogue's models, read in one MULTI, with the store revision
    read in the same MULTI (the caller compares it with its catalogue's, for a backup
    whose two halves belong together)."""
    models = sorted(versions)
    pairs = [(m, v) for m in models for v in sorted(versions[m], key=int)]
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(rkeys.registry.revision)
        pipe.hgetall(rkeys.rollouts)
        for model in models:
            pipe.lrange(rkeys.history(model), 0, -1)
            pipe.lrange(rkeys.audit(model), 0, -1)
        for model, version in pairs:
            pipe.get(mkeys.profile(model, version))
        replies = await pipe.execute()
    revision = int(replies[0] or 0)
    rollouts = {k.decode(): opb.Rollout.FromString(v) for k, v in replies[1].items()}
    history, audit = {}, {}
    for i, model in enumerate(models):
        decisions, changes = replies[2 + 2 * i], replies[3 + 2 * i]
        if decisions:
            history[model] = [opb.Decision.FromString(d) for d in decisions]
        if changes:
            audit[model] = [opb.PolicyChange.FromString(c) for c in changes]
    found = replies[2 + 2 * len(models):]
    profiles = {pair: mpb.ReferenceProfile.FromString(raw) for pair, raw in zip(pairs, found, strict=True) if raw}
    return Records(profiles, {m: r for m, r in rollouts.items() if m in versions}, history, audit), revision


def restored_rollout(rollout: opb.Rollout, now_ms: int, source: str) -> tuple[opb.Rollout, opb.Decision | None]:
    """The rollout as an import writes it (fence 0; a running one paused), and the decision
    that records the pause (None when nothing was paused)."""
    out = opb.Rollout()
    out.CopyFrom(rollout)
    out.fence = 0
    if rollout.state != opb.RUNNING:
        return out, None
    out.state, out.revision, out.updated_at_ms = opb.PAUSED, rollout.revision + 1, now_ms
    out.reason = f"paused by the import of {source}: check it, then `shunter rollout resume {rollout.model}`"
    decision = opb.Decision(
        model=rollout.model, version=rollout.version, baseline=rollout.baseline, at_ms=now_ms, step=rollout.step,
        weight=rollout.steps[rollout.step], verdict="pause", reasons=[out.reason],
        rollout_revision=out.revision, actor="import",
    )
    return out, decision


class Import:
    """The records half of ``shunter registry import``: ``prepare`` runs inside the store's
    merge transaction (``RedisStore.merge(extra=...)``), reads what Redis holds already and
    returns the writes for what it lacks; ``added`` then says what they were."""

    def __init__(self, records: Records, rkeys: RolloutKeys, mkeys: windows.Keys, *, source: str,
                 now_ms: int) -> None:
        self.records, self.rkeys, self.mkeys = records, rkeys, mkeys
        self.source, self.now_ms = source, now_ms
        self.added = Records()
        self.paused: list[str] = []

    async def prepare(self, pipe: Any) -> Callable[[Any], None]:
        """Called with the watching pipeline (immediate mode); may run again on a retry."""
        r, rkeys, mkeys = self.records, self.rkeys, self.mkeys
        present = {k.decode() for k in await pipe.hkeys(rkeys.rollouts)}
        rollouts = {m: x for m, x in r.rollouts.items() if m not in present}
        history = {m: d for m, d in r.history.items() if not await pipe.exists(rkeys.history(m))}
        audit = {m: c for m, c in r.audit.items() if not await pipe.exists(rkeys.audit(m))}
        profiles = {k: p for k, p in r.profiles.items() if not await pipe.exists(mkeys.profile(*k))}
        self.added = Records(profiles, rollouts, history, audit)
        written = {m: restored_rollout(x, self.now_ms, self.source) for m, x in rollouts.items()}
        self.paused = sorted(m for m, (_, pause) in written.items() if pause is not None)

        def queue(p: Any) -> None:
            for model, changes in audit.items():
                p.rpush(rkeys.audit(model), *[c.SerializeToString() for c in changes])
                p.ltrim(rkeys.audit(model), -rollout_records.MAX_ENTRIES, -1)
            for model, decisions in history.items():
                p.rpush(rkeys.history(model), *[d.SerializeToString() for d in decisions])
            for model, (rollout, pause) in written.items():
                p.hset(rkeys.rollouts, model, rollout.SerializeToString())
                if pause is not None:
                    p.rpush(rkeys.history(model), pause.SerializeToString())
            for model in set(history) | set(written):
                p.ltrim(rkeys.history(model), -rollout_records.MAX_ENTRIES, -1)
            for (model, version), profile in profiles.items():
                p.set(mkeys.profile(model, version), profile.SerializeToString(), nx=True)

        return queue
