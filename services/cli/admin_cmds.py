"""Operators' commands over the registry: models, versions, traffic, keys, workers.

Every command talks to ``--registry`` (``$SHUNTER_REGISTRY``) with ``--admin-key``
(``$SHUNTER_ADMIN_KEY``), prints a table for people or, with ``--json``, the
messages in the protobuf JSON mapping for scripts. A failure is one line on stderr
and exit status 1 (2 for a malformed command line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli import tls_args

DEFAULT_REGISTRY = "127.0.0.1:50051"
STATES = ("staged", "canary", "production", "shadow", "archived")
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)/(s|sec|m|min|h|hour)$")
_PER_SECOND = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}


class CommandError(Exception):
    """A problem with the operator's input found before calling the registry."""


# ---- parser ------------------------------------------------------------------------------


def common_parser() -> argparse.ArgumentParser:
    """The flags every admin tool shares: where the registry is, the key, --json, TLS."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", default=os.environ.get("SHUNTER_REGISTRY", DEFAULT_REGISTRY),
                        help=f"registry HOST:PORT (env SHUNTER_REGISTRY, default {DEFAULT_REGISTRY})")
    common.add_argument("--admin-key", default=os.environ.get("SHUNTER_ADMIN_KEY"),
                        help="admin API key (env SHUNTER_ADMIN_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    tls_args.add_dial_args(common, "the registry")
    common.add_argument("--timeout-s", type=float, default=10.0, help=argparse.SUPPRESS)
    return common


def register(subparsers: argparse._SubParsersAction) -> None:
    common = common_parser()

    def group(name: str, help_text: str) -> argparse._SubParsersAction:
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        sub = parser.add_subparsers(dest="action", metavar="ACTION")
        sub.required = True
        return sub

    def leaf(sub: argparse._SubParsersAction, name: str, handler: Callable, help_text: str) -> Any:
        parser = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        parser.set_defaults(func=lambda args: run_command(handler, args))
        return parser

    models = group("models", "register, list and show models and their versions")
    p = leaf(models, "register", models_register, "register a model version (computes the artifact's sha256)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--version", required=True, help="version number (a positive integer)")
    p.add_argument("--artifact", required=True, type=Path, help="the artifact: a file or a version directory")
    p.add_argument("--config", required=True, type=Path, help="the version's config.yaml")
    p.add_argument("--state", choices=STATES, default="staged", help="initial state (default staged)")
    p.add_argument(
        "--artifact-root", type=Path, action="append", default=[], metavar="DIR",
        help="refuse an artifact outside DIR before hashing it (repeatable)",
    )
    p.add_argument("--hash-timeout-s", type=float, default=900.0,
                   help="give up hashing the artifact after this many seconds (default 900)")
    p.add_argument("--reference", type=Path, default=None, metavar="FILE",
                   help="store a drift reference profile from this sample (npy, npz, parquet, jsonl)")
    leaf(models, "list", models_list, "list models, their live versions and traffic")
    p = leaf(models, "show", models_show, "show a model's versions and traffic policy")
    p.add_argument("name", metavar="NAME")

    versions = group("versions", "change a model version's state")
    p = leaf(versions, "set-state", versions_set_state, "set a version's state")
    p.add_argument("name", metavar="NAME")
    p.add_argument("version", metavar="N")
    p.add_argument("state", metavar="STATE", choices=STATES, help=" | ".join(STATES))

    traffic = group("traffic", "set, show, switch and roll back a model's traffic policy; its history")
    p = leaf(traffic, "set", traffic_set,
             "change a model's traffic policy: what is given changes, the rest is kept")
    p.add_argument("name", metavar="NAME")
    p.add_argument("weights", metavar="VERSION=PERCENT", nargs="*",
                   help="e.g. 1=90 2=10 (sum 100); replaces all weights; none given: weights kept")
    p.add_argument("--sticky-header", default=None, help="metadata key for sticky splits, e.g. x-user-id ('' clears)")
    p.add_argument("--shadow", default=None, metavar="VERSION",
                   help="version mirrored, responses discarded ('' clears)")
    p.add_argument("--fallback", default=None, metavar="VERSION",
                   help="version used when the chosen one has no worker ('' clears)")
    p.add_argument("--cache-ttl", type=int, default=None, metavar="S", help="cache responses for S seconds (0: off)")
    p.add_argument("--replace", action="store_true",
                   help="replace the whole policy: options not given are cleared")
    p.add_argument("--force", action="store_true",
                   help="allow weight on a version that no worker reports ready")
    p = leaf(traffic, "show", traffic_show, "show a model's traffic policy")
    p.add_argument("name", metavar="NAME")
    from services.cli.rollout_cmd import add_traffic_commands

    add_traffic_commands(traffic)  # switch, rollback, history (blue-green and the audit log)

    keys = group("keys", "create, list and revoke API keys")
    p = leaf(keys, "create", keys_create, "create an API key (its secret is shown once)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--models", default="", help="comma-separated models the key may use (default all)")
    p.add_argument("--rate", default="", help="rate limit, e.g. 100/s, 600/m (default unlimited)")
    p.add_argument("--burst", type=int, default=0, help="burst size (default: the per-second rate)")
    p.add_argument("--per-model", action="store_true", help="apply the rate limit per key and model")
    p.add_argument("--admin", action="store_true", help="an admin key (the same as --role admin)")
    p.add_argument(
        "--role", choices=("admin", "router", "worker", "client"), default=None,
        help="what the key may do: client (inference through routers; the default), worker (register, "
        "heartbeat, watch), router (watch, read the catalogue, call workers), admin (everything)",
    )
    leaf(keys, "list", keys_list, "list API keys (never their secrets)")
    p = leaf(keys, "revoke", keys_revoke, "revoke an API key")
    p.add_argument("key_id", metavar="ID")

    workers = group("workers", "list the workers holding a lease")
    leaf(workers, "list", workers_list, "list live workers and what they serve")


def run_command(handler: Callable[[Any, argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    from services.common.errors import ShunterError
    from services.common.registry_client import RegistryClient

    async def main() -> int:
        if not args.admin_key:
            raise CommandError("no admin key: pass --admin-key or set SHUNTER_ADMIN_KEY")
        try:
            tls = tls_args.client_tls(args)
        except tls_args.FlagError as exc:
            raise CommandError(str(exc)) from None
        async with RegistryClient(args.registry, args.admin_key, timeout_s=args.timeout_s, tls=tls) as client:
            return await handler(client, args)

    try:
        return asyncio.run(main())
    except (CommandError, ShunterError) as exc:
        code = getattr(exc, "grpc_code", None)
        suffix = f" [{code.name}]" if code is not None else ""
        print(f"shunter {args.command} {args.action}: {exc}{suffix}", file=sys.stderr)
        return 1


# ---- output ------------------------------------------------------------------------------


def emit_json(message: Any) -> None:
    from google.protobuf.json_format import MessageToDict

    def convert(m: Any) -> Any:
        if isinstance(m, list):
            return [convert(x) for x in m]
        return MessageToDict(m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)

    print(json.dumps(convert(message), indent=2, sort_keys=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")


def state_name(state: int) -> str:
    from services.registry.validation import state_name as name

    return name(state)


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ms else "-"


def policy_summary(policy: Any) -> str:
    parts = [f"{v}={w}" for v, w in sorted(policy.weights.items(), key=lambda kv: int(kv[0]))]
    if policy.shadow_version:
        parts.append(f"shadow={policy.shadow_version}")
    if policy.fallback_version:
        parts.append(f"fallback={policy.fallback_version}")
    if policy.sticky_header:
        parts.append(f"sticky={policy.sticky_header}")
    if policy.cache_enabled:
        parts.append(f"cache={policy.cache_ttl_s}s")
    return " ".join(parts) or "-"


def print_policy(policy: Any) -> None:
    weights = " ".join(f"{v}={w}" for v, w in sorted(policy.weights.items(), key=lambda kv: int(kv[0])))
    print(f"model:     {policy.model}")
    print(f"weights:   {weights or '-'}")
    print(f"sticky:    {policy.sticky_header or '- (random split)'}")
    print(f"shadow:    {policy.shadow_version or '-'}")
    print(f"fallback:  {policy.fallback_version or '-'}")
    print(f"cache:     {f'on, ttl {policy.cache_ttl_s}s' if policy.cache_enabled else 'off'}")


def state_value(name: str) -> int:
    from services.gen.shunter.registry.v1 import registry_pb2 as rpb

    return rpb.VersionState.Value(name.upper())


# ---- models and versions -----------------------------------------------------------------


def version_config(path: Path, version: str) -> tuple[str, str]:
    """The config text to register, and its source(s).

    In a model repository (``<model>/config.yaml`` overlaid by ``<model>/<N>/config.yaml``)
    the model-level file gives the merged config of ``version`` (as the worker would read
    it), and a version's file gives its own merge with the model-level one, whatever
    ``version`` is being registered (so version 4 can be registered from ``3/config.yaml``).
    """
    from services.common.model_config import version_config_text

    path = path.expanduser().resolve()
    if path.name == "config.yaml" and path.parent.name.isdigit() and (path.parent.parent / "config.yaml").is_file():
        return version_config_text(path.parent.parent, path.parent.name)
    if path.name == "config.yaml" and path.is_file():
        return version_config_text(path.parent, version)
    try:
        return path.read_text(), str(path)
    except OSError as exc:
        raise CommandError(f"cannot read config {path}: {exc.strerror}") from None


async def models_register(client: Any, args: argparse.Namespace) -> int:
    from services.common import artifacts
    from services.common.model_config import parse_model_config

    artifact = args.artifact.expanduser().absolute()
    if not artifact.exists():
        raise CommandError(f"artifact {artifact} does not exist")
    config_yaml, source = version_config(args.config, args.version)
    parse_model_config(config_yaml, source)  # name the local file(s) in any error
    profile = None
    if args.reference is not None:
        from services.cli.drift_cmd import RefusedReference, build_reference

        try:  # before registering: a reference that does not fit registers nothing
            profile = await asyncio.to_thread(
                build_reference, config_yaml, source, args.reference, args.name, args.version
            )
        except RefusedReference as exc:
            raise CommandError(f"{exc}; nothing registered") from None
    roots = tuple(p.expanduser().resolve() for p in args.artifact_root)
    try:
        artifacts.check_uri(artifacts.uri_for(artifact), roots)
        digest = await asyncio.to_thread(
            artifacts.sha256_of, artifact, timeout_s=args.hash_timeout_s, roots=roots
        )
    except artifacts.ArtifactError as exc:
        raise CommandError(str(exc)) from None
    version = await client.register_model_version(
        args.name, args.version, artifacts.uri_for(artifact), digest, config_yaml, state_value(args.state)
    )
    if args.json:
        emit_json(version)
    else:
        print(f"registered {version.model} version {version.version} ({version.backend}, "
              f"{state_name(version.state)}) sha256 {version.sha256}")
    if profile is not None:
        from services.cli.drift_cmd import profile_line
        from services.monitoring.client import MonitorClient

        tls = tls_args.client_tls(args)
        async with MonitorClient(args.registry, args.admin_key, timeout_s=args.timeout_s, tls=tls) as monitor:
            stored = await monitor.set_profile(profile)
        if not args.json:
            print(profile_line(stored))
    return 0


async def models_list(client: Any, args: argparse.Namespace) -> int:
    models = await client.list_models()
    if args.json:
        emit_json(models)
        return 0
    rows = []
    for model in models:
        live = [f"{v.version}:{state_name(v.state)}" for v in model.versions if state_name(v.state) != "archived"]
        archived = sum(1 for v in model.versions if state_name(v.state) == "archived")
        rows.append((model.name, " ".join(live) or "-", archived, policy_summary(model.policy)))
    table(("MODEL", "VERSIONS", "ARCHIVED", "TRAFFIC"), rows)
    return 0


async def models_show(client: Any, args: argparse.Namespace) -> int:
    model = await client.get_model(args.name)
    if args.json:
        emit_json(model)
        return 0
    print_policy(model.policy)
    print()
    rows = [
        (v.version, state_name(v.state), v.backend, v.sha256[:12], v.artifact_uri, when(v.created_at_ms), v.creator)
        for v in model.versions
    ]
    table(("VERSION", "STATE", "BACKEND", "SHA256", "ARTIFACT", "CREATED", "BY"), rows)
    for v in model.versions:
        if v.optimize_report:
            print(f"\n--- optimisation report of version {v.version} (shunter optimize) ---")
            print(v.optimize_report.rstrip())
    return 0


async def versions_set_state(client: Any, args: argparse.Namespace) -> int:
    version = await client.set_version_state(args.name, args.version, state_value(args.state))
    if args.json:
        emit_json(version)
    else:
        print(f"{version.model} version {version.version} is now {state_name(version.state)}")
    return 0


# ---- traffic -----------------------------------------------------------------------------


def parse_weights(items: Sequence[str]) -> dict[str, int]:
    weights: dict[str, int] = {}
    for item in items:
        version, sep, percent = item.partition("=")
        if not sep or not version or not percent.strip().isdigit():
            raise CommandError(f"weight {item!r} is not VERSION=PERCENT (e.g. 1=90)")
        if version in weights:
            raise CommandError(f"version {version} is given twice")
        weights[version] = int(percent)
    return weights


async def current_policy(client: Any, model: str) -> Any:
    """The model's policy now, or an empty one when it has none yet."""
    from services.common.errors import NotFound
    from services.gen.shunter.registry.v1 import registry_pb2 as rpb

    try:
        return await client.get_traffic_policy(model)
    except NotFound:
        return rpb.TrafficPolicy(model=model)


async def versions_without_ready_worker(client: Any, model: str, versions: Sequence[str]) -> list[str]:
    """Of ``versions``, those that no registered worker reports ready."""
    ready = {
        status.version
        for worker in await client.list_workers()
        for status in worker.versions
        if status.model == model and status.ready
    }
    return [v for v in versions if v not in ready]


async def traffic_set(client: Any, args: argparse.Namespace) -> int:
    """Merge what is given into the current policy (or replace it with --replace), then write it.

    The merge reads the policy and writes it back; two operators changing one model's
    policy at the same moment can still overwrite each other's change.
    """
    from services.gen.shunter.registry.v1 import registry_pb2 as rpb

    if args.cache_ttl is not None and args.cache_ttl < 0:
        raise CommandError("--cache-ttl must be >= 0")
    weights = parse_weights(args.weights)
    if args.replace:
        if not weights:
            raise CommandError("--replace needs the weights (VERSION=PERCENT ...)")
        policy = rpb.TrafficPolicy(model=args.name)
    else:
        policy = await current_policy(client, args.name)
        if not weights and all(getattr(args, f) is None for f in ("sticky_header", "shadow", "fallback", "cache_ttl")):
            raise CommandError("nothing to change: give VERSION=PERCENT weights or an option (see --help)")
    if weights:
        policy.ClearField("weights")
        policy.weights.update(weights)
        if not args.force:
            missing = await versions_without_ready_worker(client, args.name, [v for v, w in weights.items() if w])
            if missing:
                raise CommandError(
                    f"no worker reports {args.name} version(s) {', '.join(missing)} ready; requests sent there "
                    "would fail (start a worker that serves it, or --force)"
                )
    for field, value in (("sticky_header", args.sticky_header), ("shadow_version", args.shadow),
                         ("fallback_version", args.fallback)):
        if value is not None:
            setattr(policy, field, value)
    if args.cache_ttl is not None:
        policy.cache_enabled, policy.cache_ttl_s = args.cache_ttl > 0, args.cache_ttl
    policy = await client.set_traffic_policy(policy)
    if args.json:
        emit_json(policy)
    else:
        print_policy(policy)
    return 0


async def traffic_show(client: Any, args: argparse.Namespace) -> int:
    policy = await client.get_traffic_policy(args.name)
    if args.json:
        emit_json(policy)
    else:
        print_policy(policy)
    return 0


# ---- keys --------------------------------------------------------------------------------


def parse_rate(text: str, burst: int, per_model: bool) -> Any:
    from services.gen.shunter.registry.v1 import registry_pb2 as rpb

    if not text:
        if burst or per_model:
            raise CommandError("--burst and --per-model need --rate")
        return None
    match = _RATE_RE.match(text.strip())
    if not match:
        raise CommandError(f"rate {text!r} is not N/s, N/m or N/h (e.g. 100/s)")
    per_second = float(match.group(1)) / _PER_SECOND[match.group(2)]
    if per_second <= 0:
        raise CommandError(f"rate {text!r} must be positive")
    return rpb.RateLimit(per_second=per_second, burst=burst, per_model=per_model)


def rate_text(key: Any) -> str:
    if not key.HasField("rate") or not key.rate.per_second:
        return "unlimited"
    text = f"{key.rate.per_second:g}/s"
    if key.rate.burst:
        text += f" burst {key.rate.burst}"
    return text + (" per model" if key.rate.per_model else "")


def role_of(key: Any) -> str:
    from services.common.api_keys import role_of as role

    return role(key)


def key_kind(key: Any) -> str:
    """How ``keys create`` names a key: admin, data (a client key), or its service role."""
    role = role_of(key)
    return "data" if role == "client" else role


async def keys_create(client: Any, args: argparse.Namespace) -> int:
    if args.admin and args.role not in (None, "admin"):
        print(f"shunter keys create: --admin and --role {args.role} disagree; give one of them", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rate = parse_rate(args.rate, args.burst, args.per_model)
    created = await client.create_api_key(args.tenant, models, rate=rate, admin=args.admin, role=args.role or "")
    if args.json:
        emit_json(created)
        return 0
    key = created.key
    print(f"created key {key.key_id} for tenant {key.tenant} ({key_kind(key)}; "
          f"models {','.join(key.models) or 'all'}; {rate_text(key)})")
    print(f"key: {created.secret}")
    print("Store it now: the registry keeps only its hash and cannot show it again.", file=sys.stderr)
    return 0


async def keys_list(client: Any, args: argparse.Namespace) -> int:
    keys = await client.list_api_keys()
    if args.json:
        emit_json(keys)
        return 0
    rows = [
        (k.key_id, k.tenant, "yes" if k.admin else "no", ",".join(k.models) or "all", rate_text(k),
         when(k.created_at_ms), "revoked" if k.revoked else "active", role_of(k))
        for k in keys
    ]
    table(("ID", "TENANT", "ADMIN", "MODELS", "RATE", "CREATED", "STATUS", "ROLE"), rows)
    return 0


async def keys_revoke(client: Any, args: argparse.Namespace) -> int:
    key = await client.revoke_api_key(args.key_id)
    if args.json:
        emit_json(key)
    else:
        print(f"revoked key {key.key_id} (tenant {key.tenant})")
    return 0


# ---- workers -----------------------------------------------------------------------------


async def workers_list(client: Any, args: argparse.Namespace) -> int:
    workers = await client.list_workers()
    if args.json:
        emit_json(workers)
        return 0
    now_ms = time.time() * 1000
    rows = []
    for w in workers:
        versions = []
        for s in sorted(w.versions, key=lambda s: (s.model, int(s.version) if s.version.isdigit() else 0)):
            status = "ready" if s.ready else ("error" if s.error else "loading")
            versions.append(f"{s.model}/{s.version}:{status}")
        in_flight = sum(s.in_flight for s in w.versions)
        expires = f"{max(0.0, (w.expires_at_ms - now_ms) / 1000):.0f}s"
        rows.append((w.worker_id, w.address, " ".join(versions) or "-", in_flight, expires))
    table(("WORKER", "ADDRESS", "VERSIONS", "IN-FLIGHT", "LEASE"), rows)
    errors = [(w.worker_id, s) for w in workers for s in w.versions if s.error]
    for worker_id, s in errors:
        print(f"{worker_id}: {s.model}/{s.version}: {s.error}", file=sys.stderr)
    return 0
