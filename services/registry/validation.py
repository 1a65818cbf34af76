"""Validation of every registry write, as pure functions over protobuf messages.

Each check raises ``InvalidArgument`` (or ``NotFound``) with a message that names the
field and the offending value, so an operator can fix the command without reading
code. Nothing here touches Redis: the store reads the current state, calls these, and
writes only what passed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from services.common import api_keys, artifacts
from services.common.errors import InvalidArgument, NotFound
from services.common.model_config import ModelConfig, parse_model_config
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry.settings import MAX_TTL_S

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
MAX_NAME_LEN = 128
VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")
WORKER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HEADER_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_CACHE_TTL_S = 7 * 24 * 3600
MAX_CONFIG_BYTES = 256 * 1024
#: Bound on the optimisation report stored with a version (shunter optimize trims to 32 KiB).
MAX_REPORT_BYTES = 64 * 1024

ARCHIVED = rpb.ARCHIVED
STATE_NAMES: dict[int, str] = {
    rpb.STAGED: "staged",
    rpb.CANARY: "canary",
    rpb.PRODUCTION: "production",
    rpb.SHADOW: "shadow",
    rpb.ARCHIVED: "archived",
}


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, f"unknown({state})")


def check_name(value: str, what: str = "model name") -> str:
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if len(value) > MAX_NAME_LEN:
        raise InvalidArgument(f"{what} {value[:40]!r}... is longer than {MAX_NAME_LEN} characters")
    if not NAME_RE.match(value):
        raise InvalidArgument(
            f"{what} {value!r} is not well-formed: use lowercase letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return value


def check_version(value: str, what: str = "version") -> str:
    if not VERSION_RE.match(value or ""):
        raise InvalidArgument(f"{what} {value!r} is not a positive integer (e.g. 1, 2, 3; no leading zeros)")
    return value


def check_state(state: int) -> int:
    if state not in STATE_NAMES:
        raise InvalidArgument(
            f"state {state} is not one of staged, canary, production, shadow, archived"
        )
    return state


def check_sha256(value: str) -> str:
    if not SHA256_RE.match(value or ""):
        raise InvalidArgument(f"sha256 {value!r} is not 64 lowercase hex digits")
    return value


def check_artifact_uri(value: str, roots: Sequence[Path] = ()) -> str:
    """An artifact URI the workers may fetch: see ``artifacts.check_uri`` for the rules.

    Where the path exists on the registry's host it is also resolved (symlinks followed)
    and must be a regular file or a directory inside ``roots``; where it does not, its
    text alone must lie inside them (the worker checks again before reading it).
    """
    if not value:
        raise InvalidArgument("artifact_uri is empty")
    if not value.startswith("file://"):
        raise InvalidArgument(f"artifact_uri {value!r} must be an absolute file:// URI")
    try:
        artifacts.check_uri(value, roots)
    except artifacts.ArtifactError as exc:
        raise InvalidArgument(str(exc)) from None
    return value


def parse_version_config(model: str, version: str, config_yaml: str) -> ModelConfig:
    if not config_yaml.strip():
        raise InvalidArgument("config_yaml is empty")
    if len(config_yaml.encode()) > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"config_yaml is larger than {MAX_CONFIG_BYTES} bytes")
    # ModelConfigError is an INVALID_ARGUMENT whose message names the key.
    return parse_model_config(config_yaml, f"config.yaml of {model} version {version}")


def check_report(text: str) -> str:
    """An optimisation report stored with a version: bounded, like config_yaml."""
    if len(text.encode()) > MAX_REPORT_BYTES:
        raise InvalidArgument(f"optimize_report is larger than {MAX_REPORT_BYTES} bytes")
    return text


def build_version(
    request: rpb.RegisterModelVersionRequest, creator: str, now_ms: int, artifact_roots: Sequence[Path] = ()
) -> rpb.ModelVersion:
    """The ModelVersion a valid registration records (signature and batching from its config)."""
    check_name(request.model)
    check_version(request.version)
    check_artifact_uri(request.artifact_uri, artifact_roots)
    check_sha256(request.sha256)
    state = request.state or rpb.STAGED
    check_state(state)
    config = parse_version_config(request.model, request.version, request.config_yaml)
    signature = rpb.Signature(
        inputs=[rpb.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in config.inputs],
        outputs=[rpb.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in config.outputs],
        max_batch_size=config.max_batch_size,
    )
    batching = rpb.BatchingConfig(enabled=config.dynamic_batching is not None)
    if config.dynamic_batching is not None:
        batching.max_queue_delay_us = config.dynamic_batching.max_queue_delay_us
        batching.preferred_batch_sizes.extend(config.dynamic_batching.preferred_batch_sizes)
        batching.max_queue_size = config.dynamic_batching.max_queue_size
    return rpb.ModelVersion(
        model=request.model,
        version=request.version,
        artifact_uri=request.artifact_uri,
        sha256=request.sha256,
        backend=config.backend,
        signature=signature,
        batching=batching,
        state=state,
        creator=creator,
        created_at_ms=now_ms,
        config_yaml=request.config_yaml,
        optimize_report=check_report(request.optimize_report),
    )


def _live_version(model: str, version: str, versions: dict[str, rpb.ModelVersion], role: str) -> None:
    check_version(version, f"{role} version")
    found = versions.get(version)
    if found is None:
        raise InvalidArgument(f"{role} version {version} of model {model!r} is not registered")
    if found.state == ARCHIVED:
        raise InvalidArgument(f"{role} version {version} of model {model!r} is archived and cannot take traffic")


def check_policy(policy: rpb.TrafficPolicy, versions: dict[str, rpb.ModelVersion]) -> rpb.TrafficPolicy:
    """A normalised copy of a valid policy (zero weights dropped), for the model's ``versions``."""
    model = check_name(policy.model)
    if not versions:
        raise NotFound(f"model {model!r} is not registered")
    clean = rpb.TrafficPolicy(model=model)
    for version, weight in sorted(policy.weights.items()):
        _live_version(model, version, versions, "weighted")
        if weight > 100:
            raise InvalidArgument(f"weight {weight} of version {version} is over 100")
        if weight:
            clean.weights[version] = weight
    total = sum(policy.weights.values())
    if total != 100:
        shown = ", ".join(f"{v}={w}" for v, w in sorted(policy.weights.items())) or "none"
        raise InvalidArgument(f"weights must sum to 100, got {total} ({shown})")
    if policy.sticky_header:
        if len(policy.sticky_header) > 128 or not HEADER_RE.match(policy.sticky_header):
            raise InvalidArgument(
                f"sticky_header {policy.sticky_header!r} is not a valid lowercase gRPC metadata key"
            )
        if policy.sticky_header == "authorization" or policy.sticky_header.startswith("grpc-"):
            raise InvalidArgument(f"sticky_header {policy.sticky_header!r} is reserved")
        clean.sticky_header = policy.sticky_header
    if policy.shadow_version:
        _live_version(model, policy.shadow_version, versions, "shadow")
        if policy.shadow_version in clean.weights:
            raise InvalidArgument(
                f"shadow version {policy.shadow_version} also has weight "
                f"{clean.weights[policy.shadow_version]}; a shadow gets mirrored traffic only"
            )
        clean.shadow_version = policy.shadow_version
    if policy.fallback_version:
        _live_version(model, policy.fallback_version, versions, "fallback")
        clean.fallback_version = policy.fallback_version
    if policy.cache_enabled:
        if not 0 < policy.cache_ttl_s <= MAX_CACHE_TTL_S:
            raise InvalidArgument(
                f"cache_ttl_s must be between 1 and {MAX_CACHE_TTL_S} when the cache is on, "
                f"got {policy.cache_ttl_s}"
            )
        clean.cache_enabled = True
        clean.cache_ttl_s = policy.cache_ttl_s
    elif policy.cache_ttl_s:
        raise InvalidArgument("cache_ttl_s is set but cache_enabled is false")
    return clean


def traffic_roles(policy: rpb.TrafficPolicy | None, version: str) -> list[str]:
    """How ``version`` takes traffic under ``policy`` (weight, shadow, fallback), if at all."""
    if policy is None:
        return []
    roles = []
    if policy.weights.get(version, 0):
        roles.append(f"weight {policy.weights[version]}")
    if policy.shadow_version == version:
        roles.append("shadow")
    if policy.fallback_version == version:
        roles.append("fallback")
    return roles


def check_archivable(model: str, version: str, policy: rpb.TrafficPolicy | None) -> None:
    roles = traffic_roles(policy, version)
    if roles:
        raise InvalidArgument(
            f"version {version} of model {model!r} still carries traffic ({', '.join(roles)}); "
            "move its traffic away with `shunter traffic set` before archiving it"
        )


def check_worker(request: rpb.RegisterWorkerRequest) -> None:
    host, sep, port = request.address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"worker address {request.address!r} is not HOST:PORT")
    if request.worker_id and not WORKER_ID_RE.match(request.worker_id):
        raise InvalidArgument(f"worker_id {request.worker_id!r} is not well-formed")
    if request.ttl_s > MAX_TTL_S:
        raise InvalidArgument(f"ttl_s {request.ttl_s} is over {MAX_TTL_S}")
    check_statuses(request.versions)


def check_statuses(statuses: object) -> None:
    for status in statuses:  # type: ignore[attr-defined]
        check_name(status.model, "model name in a version status")
        check_version(status.version, "version in a version status")


def check_key_request(request: rpb.CreateApiKeyRequest) -> str:
    """Check a key request; returns the role the key gets."""
    role = request.role or (api_keys.ADMIN if request.admin else api_keys.CLIENT)
    if role not in api_keys.ROLES:
        raise InvalidArgument(f"unknown key role {role!r}; expected one of {', '.join(api_keys.ROLES)}")
    if request.admin and role != api_keys.ADMIN:
        raise InvalidArgument(f"admin is set but role is {role!r}; an admin key has role admin")
    check_name(request.tenant, "tenant")
    for model in request.models:
        check_name(model, "model name in the key's models")
    rate = request.rate
    if not math.isfinite(rate.per_second) or rate.per_second < 0:
        raise InvalidArgument(f"rate per_second {rate.per_second} must be a finite number >= 0")
    if rate.burst and not rate.per_second:
        raise InvalidArgument("rate burst is set but per_second is 0 (unlimited)")
    return role
