"""`shunter registry`: run the registry service against a Redis."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.cli.common_args import add_server_args, server_settings

DEFAULT_PORT = 50051


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="run the registry (models, traffic policies, workers, API keys) on Redis",
        description="Run the registry service. Several replicas may share one Redis.",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("SHUNTER_REDIS_URL"),
        help="Redis URL, e.g. redis://127.0.0.1:6379/0 (env SHUNTER_REDIS_URL)",
    )
    parser.add_argument("--key-prefix", default="shunter:", help="prefix of every Redis key (default shunter:)")
    parser.add_argument(
        "--admin-key-file", type=Path, default=None,
        help="file holding the first admin key; only its sha256 is stored",
    )
    parser.add_argument("--lease-ttl-s", type=int, default=10,
                        help="worker lease TTL when a worker asks for none (default 10)")
    parser.add_argument("--refresh-interval-s", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--artifact-root", type=Path, action="append", default=[], metavar="DIR",
        help="directory registered artifacts must lie in (repeatable); none: any local path",
    )
    add_server_args(parser, default_port=DEFAULT_PORT)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.common.server import run as run_service
    from services.registry.app import RegistryApp, RegistrySettings

    if not args.redis_url:
        print("shunter registry: --redis-url (or SHUNTER_REDIS_URL) is required", file=sys.stderr)
        return 2
    try:
        settings = RegistrySettings(
            redis_url=args.redis_url,
            key_prefix=args.key_prefix,
            admin_key_file=args.admin_key_file,
            lease_ttl_s=args.lease_ttl_s,
            refresh_interval_s=args.refresh_interval_s,
            artifact_roots=tuple(p.expanduser().resolve() for p in args.artifact_root),
        )
        app = RegistryApp(settings)
    except ValueError as exc:
        print(f"shunter registry: {exc}", file=sys.stderr)
        return 2
    return run_service(app, server_settings(args))
