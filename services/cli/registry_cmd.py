"""`shunter registry`: run the registry service against a Redis; back its state up.

``shunter registry export FILE`` / ``shunter registry import FILE`` read and write the
registry's Redis directly (like ``etcdctl snapshot``), so they work while no registry
runs. Exit codes: 0 done, 1 Redis unreachable or the import clashes with what it holds
(nothing written), 2 bad arguments or a bad backup file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.cli.common_args import add_server_args, configure_tracing, server_settings

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
    actions = parser.add_subparsers(dest="backup_action", metavar="{export,import}")
    for name, text in (
        ("export", "write models, versions, traffic policies and API keys (hashes) to a JSON file"),
        ("import", "add a backup file to the registry's Redis (all or nothing; never changes what is there)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("file", type=Path, help="the backup file")
        action.add_argument(
            "--redis-url", dest="backup_redis_url", default=None, metavar="URL",
            help="the registry's Redis URL (env SHUNTER_REDIS_URL)",
        )
        action.add_argument("--key-prefix", dest="backup_key_prefix", default=None, metavar="PREFIX",
                            help="prefix of the registry's Redis keys (default shunter:)")
        action.set_defaults(func=run_backup)


def run(args: argparse.Namespace) -> int:
    from services.common.server import run as run_service
    from services.registry.app import RegistryApp, RegistrySettings

    if not args.redis_url:
        print("shunter registry: --redis-url (or SHUNTER_REDIS_URL) is required", file=sys.stderr)
        return 2
    if (code := configure_tracing("registry", args)) is not None:
        return code
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


def run_backup(args: argparse.Namespace) -> int:
    import asyncio

    action = args.backup_action
    redis_url = args.backup_redis_url or args.redis_url
    if not redis_url:
        print(f"shunter registry {action}: --redis-url (or SHUNTER_REDIS_URL) is required", file=sys.stderr)
        return 2
    prefix = args.backup_key_prefix if args.backup_key_prefix is not None else args.key_prefix
    return asyncio.run(_backup(action, args.file, redis_url, prefix))


async def _backup(action: str, path: Path, redis_url: str, prefix: str) -> int:
    from redis.exceptions import RedisError

    from services.common.errors import ShunterError
    from services.registry import backup
    from services.registry.store import RedisStore

    store = RedisStore(redis_url, prefix)
    try:
        if action == "export":
            catalogue = await store.read()
            try:
                backup.write(path, catalogue)
            except OSError as exc:
                print(f"shunter registry export: cannot write {path}: {exc.strerror}", file=sys.stderr)
                return 2
            print(f"exported {catalogue.counts()} at revision {catalogue.revision} to {path}")
            return 0
        try:
            source = backup.read(path)
        except backup.BackupError as exc:
            print(f"shunter registry import: {path}: {exc}; nothing imported", file=sys.stderr)
            return 2
        present, revision = await store.merge(source, overwrite=False, leases=False)
        added = source.missing_from(present)
        print(f"imported {source.counts()} from {path} ({len(added)} versions/keys were missing); "
              f"revision {revision}")
        return 0
    except RedisError as exc:
        print(f"shunter registry {action}: cannot reach Redis at {store.where} ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 1
    except ShunterError as exc:
        print(f"shunter registry {action}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await store.close()
