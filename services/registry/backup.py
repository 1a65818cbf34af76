"""Backup files of the registry: the catalogue and the operator records, as JSON.

``shunter registry export FILE`` writes one from the store; ``shunter registry import
FILE`` adds one to a store (e.g. a Redis that lost its data while every registry was
down too). A backup holds the catalogue (models, versions, traffic policies, API keys)
and, from format version 2 on, the operator records beside it: drift reference
profiles, rollout records, rollout decision histories and traffic audit logs
(backup_records.py, which also lists what is deliberately left out: leases, counters,
statistics windows, caches). Worker leases are not in it: workers register again on
their own. Keys are stored as their sha256 only, as in Redis, so a backup holds no
secret; it does hold artifact URIs and tenants, so keep it as private as the Redis it
came from.

Format versions: 1 (the catalogue only) and 2 (the records sections ``profiles``,
``rollouts``, ``rollout_history`` and ``traffic_audit`` added) both import; a file of
version 1, or one of version 2 without some of these sections, imports with no records
of that kind. Export writes version 2, which an older Shunter refuses rather than drop
the records silently.

The file is checked whole before anything is written (format, every record, names and
policies as the registry's own validation sees them, every record's model and version
among the backup's own); a bad file is a ``BackupError`` naming the record and the
problem.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from services.common.errors import ShunterError
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry import backup_records, validation
from services.registry.backup_records import Records
from services.registry.catalogue import Catalogue

FORMAT = "shunter-registry-backup"
#: What export writes; READABLE: what import accepts (see the module docstring).
FORMAT_VERSION = 2
READABLE = (1, 2)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BackupError(ValueError):
    """The file is not a registry backup this version can read."""


@dataclass(frozen=True)
class Backup:
    """What a backup file holds: the catalogue (no leases) and the operator records."""

    catalogue: Catalogue
    records: Records


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def to_document(catalogue: Catalogue, records: Records | None = None) -> dict[str, Any]:
    """The backup of ``catalogue`` (no leases) and ``records`` as a JSON-ready dict."""
    models = []
    for name in sorted(catalogue.versions):
        versions = sorted(catalogue.versions[name].values(), key=lambda v: int(v.version))
        policy = catalogue.policies.get(name)
        models.append({
            "name": name,
            "versions": [_dict(v) for v in versions],
            "policy": _dict(policy) if policy is not None else None,
        })
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at_ms": int(time.time() * 1000),
        "revision": catalogue.revision,
        "epoch": catalogue.epoch,
        "models": models,
        "keys": [_dict(k) for k in catalogue.sorted_keys()],
        **backup_records.to_sections(records or Records()),
    }


def write(path: Path, catalogue: Catalogue, records: Records | None = None) -> None:
    """Write the backup atomically: a half-written file never replaces a good one."""
    text = json.dumps(to_document(catalogue, records), indent=1, sort_keys=True) + "\n"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def _parse(cls: type, record: Any, where: str) -> Any:
    return backup_records.parse_message(cls, record, where, BackupError)


def from_document(document: Any) -> Backup:
    """The catalogue and records a backup describes; BackupError names the first problem found."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BackupError(f"not a registry backup (no \"format\": \"{FORMAT}\")")
    if type(document.get("format_version")) is not int or document["format_version"] not in READABLE:
        raise BackupError(
            f"backup format_version {document.get('format_version')!r} is not supported "
            f"(this Shunter reads {', '.join(map(str, READABLE))})"
        )
    revision, epoch = document.get("revision", 0), document.get("epoch", "")
    if not isinstance(revision, int) or revision < 0 or not isinstance(epoch, str):
        raise BackupError("revision must be a whole number of 0 or more and epoch a string")
    models, keys = document.get("models", []), document.get("keys", [])
    if not isinstance(models, list) or not isinstance(keys, list):
        raise BackupError("models and keys must be lists")
    versions: dict[str, dict[str, rpb.ModelVersion]] = {}
    policies: dict[str, rpb.TrafficPolicy] = {}
    for index, entry in enumerate(models):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BackupError(f"models[{index}] must be an object with a name")
        name = entry["name"]
        where = f"model {name!r}"
        try:
            validation.check_name(name)
            parsed = _versions(entry.get("versions"), name, where)
            if not parsed:
                raise BackupError(f"{where} has no versions")
            if name in versions:
                raise BackupError(f"{where} appears twice")
            versions[name] = parsed
            if entry.get("policy") is not None:
                policy = _parse(rpb.TrafficPolicy, entry["policy"], f"{where} policy")
                if policy.model != name:
                    raise BackupError(f"{where} policy names model {policy.model!r}")
                policies[name] = validation.check_policy(policy, parsed)
        except ShunterError as exc:
            raise BackupError(f"{where}: {exc.message}") from None
    parsed_keys: dict[str, rpb.ApiKey] = {}
    hashes: set[str] = set()
    for index, record in enumerate(keys):
        key = _parse(rpb.ApiKey, record, f"keys[{index}]")
        if not _KEY_ID_RE.match(key.key_id):
            raise BackupError(f"keys[{index}]: key id {key.key_id!r} is not well-formed")
        if not _SHA256_RE.match(key.secret_sha256):
            raise BackupError(f"key {key.key_id}: secret_sha256 must be 64 lowercase hex digits")
        if key.key_id in parsed_keys or key.secret_sha256 in hashes:
            raise BackupError(f"key {key.key_id} appears twice")
        parsed_keys[key.key_id] = key
        hashes.add(key.secret_sha256)
    if not any(k.admin and not k.revoked for k in parsed_keys.values()) and parsed_keys:
        raise BackupError("the backup has keys but no active admin key")
    try:
        records = backup_records.from_sections(document, versions)
    except backup_records.RecordsError as exc:
        raise BackupError(str(exc)) from None
    return Backup(Catalogue(revision, versions, policies, {}, parsed_keys, epoch=epoch), records)


def _versions(records: Any, model: str, where: str) -> dict[str, rpb.ModelVersion]:
    if not isinstance(records, list):
        raise BackupError(f"{where}: versions must be a list")
    out: dict[str, rpb.ModelVersion] = {}
    for index, record in enumerate(records):
        version = _parse(rpb.ModelVersion, record, f"{where} versions[{index}]")
        label = f"{where} version {version.version or index}"
        if version.model != model:
            raise BackupError(f"{label} names model {version.model!r}")
        validation.check_version(version.version)
        validation.check_state(version.state)
        if not _SHA256_RE.match(version.sha256):
            raise BackupError(f"{label}: sha256 must be 64 lowercase hex digits")
        if not version.artifact_uri or not version.backend:
            raise BackupError(f"{label} has no artifact_uri or backend")
        if version.version in out:
            raise BackupError(f"{label} appears twice")
        out[version.version] = version
    return out


def read(path: Path) -> Backup:
    """The backup in file ``path`` (BackupError for an unreadable or bad file)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BackupError(f"{path} is not a text file") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackupError(f"{path} is not JSON: {exc}") from None
    return from_document(document)
