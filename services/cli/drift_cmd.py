"""`shunter drift`: reference profiles and the cluster's input drift per model version.

    shunter drift baseline MODEL VERSION --from FILE    # npy, npz, parquet or jsonl
    shunter drift show MODEL [--version V] [--top N] [--json]

Both talk to the registry (``--registry`` / ``$SHUNTER_REGISTRY``) with an admin key
(``--admin-key`` / ``$SHUNTER_ADMIN_KEY``). Exit status: 0 done; 1 the registry refused
or failed; 2 a bad command line or a reference file that does not fit the signature
(nothing stored). ``drift show`` exits 0 whatever the drift: scripts read ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from services.cli import tls_args
from services.cli.admin_cmds import common_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    common = common_parser()
    parser = subparsers.add_parser(
        "drift", help="input drift: store reference profiles, show the most drifted features",
        description="Input drift against a reference profile per model version (README: Model monitoring and drift).",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("baseline", parents=[common], help="store a version's reference profile from a sample file",
                       description="Bin a reference sample (e.g. the training split) and store it with the version.")
    p.add_argument("name", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--from", dest="source", required=True, type=Path, metavar="FILE",
                   help="reference sample: .npy (one input), .npz, .parquet or .jsonl, rows first")
    p.set_defaults(func=lambda args: _run(baseline, args))
    p = sub.add_parser("show", parents=[common], help="the latest window's most drifted features",
                       description="Scores of the latest complete window, all workers together, most drifted first.")
    p.add_argument("name", metavar="MODEL")
    p.add_argument("--version", default="", help="one version (default: every version with a profile)")
    p.add_argument("--top", type=int, default=10, help="features to list per version (default 10; 0: all)")
    p.set_defaults(func=lambda args: _run(show, args))


class RefusedReference(Exception):
    """The reference file does not fit the version (exit 2, nothing stored)."""


def build_reference(config_yaml: str, source: str, path: Path, model: str, version: str) -> Any:
    """The ReferenceProfile of ``path`` for a version with this config; RefusedReference if it does not fit."""
    from services.common.errors import ModelConfigError
    from services.common.model_config import parse_model_config
    from services.monitoring.features import plan_features
    from services.monitoring.profile import ProfileError, build_profile
    from services.monitoring.reference import ReferenceError, load_reference
    from services.monitoring.service import drift_config

    try:
        config = parse_model_config(config_yaml, source)
    except ModelConfigError as exc:
        raise RefusedReference(str(exc)) from None
    drift = drift_config(config)
    if config.monitoring is None or not drift.enabled:
        print(f"shunter: note: {source} has no monitoring: block with drift enabled, so workers will not count "
              "drift for this version (the profile is stored anyway)", file=sys.stderr)
    try:
        sample, rows = load_reference(path, config.inputs)
        plan = plan_features(config.inputs, drift.max_features)
        profile = build_profile(plan, sample, rows, drift.bins)
    except (ReferenceError, ProfileError) as exc:
        raise RefusedReference(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from None
    return profile.to_proto(model, version, source=str(path.expanduser().resolve()))


def _run(handler: Any, args: argparse.Namespace) -> int:
    from services.common.errors import ShunterError
    from services.common.registry_client import RegistryClient
    from services.monitoring.client import MonitorClient

    if not args.admin_key:
        print(f"shunter drift {args.action}: no admin key: pass --admin-key or set SHUNTER_ADMIN_KEY", file=sys.stderr)
        return 2

    try:
        tls = tls_args.client_tls(args)
    except tls_args.FlagError as exc:
        print(f"shunter drift {args.action}: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        async with RegistryClient(args.registry, args.admin_key, timeout_s=args.timeout_s, tls=tls) as registry, \
                MonitorClient(args.registry, args.admin_key, timeout_s=args.timeout_s, tls=tls) as monitor:
            return await handler(registry, monitor, args)

    try:
        return asyncio.run(main())
    except RefusedReference as exc:
        print(f"shunter drift {args.action}: {exc}; nothing stored", file=sys.stderr)
        return 2
    except ShunterError as exc:
        code = getattr(exc, "grpc_code", None)
        suffix = f" [{code.name}]" if code is not None else ""
        print(f"shunter drift {args.action}: {exc}{suffix}", file=sys.stderr)
        return 1


async def baseline(registry: Any, monitor: Any, args: argparse.Namespace) -> int:
    from services.cli.admin_cmds import emit_json

    model = await registry.get_model(args.name)
    version = next((v for v in model.versions if v.version == args.version), None)
    if version is None:
        print(f"shunter drift baseline: model {args.name!r} has no version {args.version!r} "
              f"(has: {', '.join(v.version for v in model.versions) or 'none'})", file=sys.stderr)
        return 1
    profile = await asyncio.to_thread(
        build_reference, version.config_yaml, f"config.yaml of {args.name} version {args.version}", args.source,
        args.name, args.version,
    )
    stored = await monitor.set_profile(profile)
    if args.json:
        emit_json(stored)
    else:
        print(profile_line(stored))
    return 0


def profile_line(profile: Any) -> str:
    return (f"reference profile for {profile.model} version {profile.version}: {len(profile.features)} features "
            f"from {profile.rows} rows (profile {profile.profile_id})")


async def show(registry: Any, monitor: Any, args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    if args.top < 0:
        print("shunter drift show: --top must be 0 or more", file=sys.stderr)
        return 2
    versions = await monitor.drift(args.name, args.version)
    if args.json:
        print(json.dumps([
            MessageToDict(v, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for v in versions
        ], indent=2, sort_keys=True))
        return 0
    if not versions:
        print(f"{args.name}: no version has a reference profile "
              f"(shunter drift baseline {args.name} VERSION --from FILE)")
        return 0
    for result in versions:
        print_version(result, args.top)
    return 0


def print_version(result: Any, top: int) -> None:
    from services.cli.admin_cmds import table, when

    bands = ", ".join(f"{m} {t.warn:g}/{t.drift:g}" for m, t in sorted(result.thresholds.items()))
    print(f"{result.model} version {result.version}: ", end="")
    if not result.scored:
        print(f"not scored: {result.note}")
        return
    flagged = sum(f.level == "drift" for f in result.features)
    print(f"window ending {when(result.window_end_ms)} ({result.window_s:g} s, {result.rows} rows); "
          f"{flagged} of {len(result.features)} features drifted by {result.method} (warn/drift: {bands})")
    shown = result.features if top == 0 else result.features[:top]
    table(("FEATURE", "PSI", "JS", "KS", "LEVEL"),
          [(f.feature, f"{f.psi:.3f}", f"{f.js:.3f}", f"{f.ks:.3f}", f.level) for f in shown])
