"""`shunter router`: the stateless front door (auth, limits, splits, cache, balancing).

Its flags come from RouterSettings, the TLS settings and ServerSettings
(services/common/settings.py): each is also a ``SHUNTER_ROUTER_<NAME>`` variable.
"""

from __future__ import annotations

import argparse

from services.cli import tls_args
from services.cli.common_args import (
    add_process_args,
    add_server_args,
    configure_tracing,
    run_process_group,
    server_settings,
    usage_error,
)
from services.common import settings as settings_source
from services.router.settings import RouterSettings

SERVICE = "router"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "router",
        help="run a router (clients' inference endpoint)",
        description=(
            "Serve the Open Inference Protocol to clients and route each request to a worker, "
            "following the registry's routing table. Every flag can also be set by the environment "
            "variable named in its help."
        ),
    )
    settings_source.add_arguments(parser, RouterSettings, SERVICE)
    tls_args.add_serve_args(parser, SERVICE)
    tls_args.add_dial_args(parser, "the registry and workers", SERVICE)
    add_process_args(parser, "")
    add_server_args(parser, SERVICE, default_port=8001)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.common.server import run as run_service
    from services.router.app import RouterApp

    if args.processes < 1:
        return usage_error(SERVICE, "--processes must be at least 1")
    try:
        tls = tls_args.server_tls(args)
        client_tls = tls_args.client_tls(args)
        server = server_settings(args, SERVICE, tls=tls)
        settings = settings_source.from_args(
            RouterSettings, args, SERVICE, max_message_bytes=server.max_message_bytes, client_tls=client_tls
        )
    except settings_source.SettingsError as exc:
        return usage_error(SERVICE, str(exc))
    if settings.redis_url:
        from services.common.redis_connect import RedisUrlError, parse_url

        try:
            parse_url(settings.redis_url)
        except RedisUrlError as exc:
            return usage_error(SERVICE, f"--redis-url: {exc}")
    if not settings.registry:
        return usage_error(SERVICE, "give --registry HOST:PORT (or set $SHUNTER_REGISTRY)")
    if not settings.admin_key:
        return usage_error(SERVICE, "give --admin-key-file, --admin-key or $SHUNTER_ADMIN_KEY")
    if args.processes > 1:
        return run_process_group(SERVICE, args, server)
    if (code := configure_tracing(SERVICE, server)) is not None:
        return code
    return run_service(RouterApp(settings), server)
