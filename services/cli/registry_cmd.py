"""`shunter registry`: run the registry service against a Redis; back its state up.

``shunter registry export FILE`` / ``shunter registry import FILE`` read and write the
registry's Redis directly (like ``etcdctl snapshot``), so they work while no registry
runs. Exit codes: 0 done, 1 Redis unreachable or the import clashes with what it holds
(nothing written), 2 bad arguments or a bad backup file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.cli import tls_args
from services.cli.common_args import add_server_args, configure_tracing, server_settings, usage_error
from services.common import settings as settings_source
from services.registry.settings import RegistrySettings

SERVICE = "registry"
DEFAULT_PORT = 50051


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="run the registry (models, traffic policies, workers, API keys) on Redis",
        description="Run the registry service. Several replicas may share one Redis.",
    )
    settings_source.add_arguments(parser, RegistrySettings, SERVICE)
    tls_args.add_serve_args(parser, SERVICE)
    add_server_args(parser, SERVICE, default_port=DEFAULT_PORT)
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="backup_action", metavar="{export,import}")
    for name, text in (
        ("export", "write models, versions, traffic policies, API keys (hashes), drift reference profiles, "
                   "rollouts and the rollout and traffic audit history to a JSON file"),
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
    from services.registry.app import RegistryApp

    try:
        settings = settings_source.from_args(RegistrySettings, args, SERVICE)
        server = server_settings(args, SERVICE, tls=tls_args.server_tls(args))
        if not settings.redis_url:
            return usage_error(SERVICE, "--redis-url (or SHUNTER_REDIS_URL) is required")
        _check_redis_url(settings.redis_url)
        if (code := configure_tracing(SERVICE, server)) is not None:
            return code
        app = RegistryApp(settings)
    except ValueError as exc:  # SettingsError, or an unreadable admin key file
        return usage_error(SERVICE, str(exc))
    return run_service(app, server)


def _check_redis_url(url: str) -> None:
    from services.common.redis_connect import RedisUrlError, parse_url

    try:
        parse_url(url)
    except RedisUrlError as exc:
        raise settings_source.SettingsError(f"--redis-url: {exc}") from None


def run_backup(args: argparse.Namespace) -> int:
    import asyncio

    action = args.backup_action
    try:
        given = settings_source.values(RegistrySettings, args, SERVICE)
    except settings_source.SettingsError as exc:
        return usage_error(f"{SERVICE} {action}", str(exc))
    redis_url = args.backup_redis_url or given.get("redis_url")
    if not redis_url:
        return usage_error(f"{SERVICE} {action}", "--redis-url (or SHUNTER_REDIS_URL) is required")
    prefix = args.backup_key_prefix if args.backup_key_prefix is not None else given.get("key_prefix", "shunter:")
    return asyncio.run(_backup(action, args.file, redis_url, prefix))


async def _backup(action: str, path: Path, redis_url: str, prefix: str) -> int:
    from redis.exceptions import RedisError

    from services.common.errors import ShunterError
    from services.common.redis_connect import is_cluster
    from services.monitoring.windows import Keys as MonitorKeys
    from services.registry import backup, backup_records
    from services.registry.rollout.records import RolloutKeys
    from services.registry.store import RedisStore, now_ms

    try:
        store = RedisStore(redis_url, prefix)
    except ValueError as exc:
        print(f"shunter registry {action}: {exc}", file=sys.stderr)
        return 2
    rkeys, mkeys = RolloutKeys(store.keys), MonitorKeys(prefix, cluster=is_cluster(redis_url))
    try:
        if action == "export":
            for _attempt in range(20):  # the records read at the catalogue's revision
                catalogue = await store.read()
                records, revision = await backup_records.read(store.redis, rkeys, mkeys, catalogue.versions)
                if revision == catalogue.revision:
                    break
            else:
                print("shunter registry export: the registry kept changing while it was read; try again",
                      file=sys.stderr)
                return 1
            try:
                backup.write(path, catalogue, records)
            except OSError as exc:
                print(f"shunter registry export: cannot write {path}: {exc.strerror}", file=sys.stderr)
                return 2
            print(f"exported {catalogue.counts()}, {records.counts()} at revision {catalogue.revision} to {path}")
            return 0
        try:
            source = backup.read(path)
        except backup.BackupError as exc:
            print(f"shunter registry import: {path}: {exc}; nothing imported", file=sys.stderr)
            return 2
        extra = backup_records.Import(source.records, rkeys, mkeys, source=path.name, now_ms=now_ms())
        present, revision = await store.merge(source.catalogue, overwrite=False, leases=False, extra=extra.prepare)
        added = source.catalogue.missing_from(present)
        print(f"imported {source.catalogue.counts()} from {path} ({len(added)} versions/keys were missing) "
              f"and {source.records.counts()} (added: {extra.added.counts()}); revision {revision}")
        if extra.paused:
            print(f"rollouts of {', '.join(extra.paused)} were running and are imported paused: check each, "
                  "then `shunter rollout resume MODEL`")
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
