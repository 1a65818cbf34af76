"""`shunter router`: the stateless front door (auth, limits, splits, cache, balancing)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.cli.common_args import (
    add_process_args,
    add_server_args,
    configure_tracing,
    run_process_group,
    server_settings,
)
from services.router.settings import WORKER_LINKS, RouterSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "router",
        help="run a router (clients' inference endpoint)",
        description=(
            "Serve the Open Inference Protocol to clients and route each request to a worker, "
            "following the registry's routing table."
        ),
    )
    parser.add_argument(
        "--registry",
        default=os.environ.get("SHUNTER_REGISTRY"),
        help="registry HOST:PORT (default $SHUNTER_REGISTRY)",
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("SHUNTER_ADMIN_KEY"),
        help="key for the registry's watch stream (default $SHUNTER_ADMIN_KEY)",
    )
    parser.add_argument("--admin-key-file", type=Path, help="read the registry key from this file instead")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("SHUNTER_REDIS_URL", ""),
        help="Redis for shared rate limits and the cache (default $SHUNTER_REDIS_URL; "
        "none: per-replica limits, no cache)",
    )
    parser.add_argument("--key-prefix", default="shunter:", help="prefix of the router's Redis keys")
    parser.add_argument(
        "--near-cache-mb",
        type=float,
        default=32.0,
        help="MiB of recent cache entries each router keeps in memory in front of Redis (0: none; default 32)",
    )
    parser.add_argument(
        "--worker-link",
        choices=WORKER_LINKS,
        default="stream",
        help="how requests travel to workers: multiplexed over one ModelStreamInfer stream per worker "
        "(default), or one ModelInfer call each",
    )
    parser.add_argument(
        "--request-timeout-s", type=float, default=60.0, help="deadline for requests whose caller sets none"
    )
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="private key of --tls-cert (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)")
    parser.add_argument(
        "--payload-log",
        default=os.environ.get("SHUNTER_ROUTER_PAYLOAD_LOG", ""),
        metavar="redis-stream://HOST:PORT/DB/STREAM",
        help="append a sample of requests and responses to this Redis stream (default $SHUNTER_ROUTER_PAYLOAD_LOG; "
        "none: off)",
    )
    parser.add_argument(
        "--payload-sample", type=float, default=0.01, help="fraction of requests the payload log keeps (default 0.01)"
    )
    parser.add_argument(
        "--payload-log-maxlen", type=int, default=100_000,
        help="entries the payload stream is trimmed to, approximately (XADD MAXLEN ~; default 100000)",
    )
    add_process_args(parser, "")
    add_server_args(parser, default_port=8001)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.common.server import TlsConfig
    from services.common.server import run as run_service
    from services.router.app import RouterApp

    if not args.registry:
        print("shunter router: give --registry HOST:PORT (or set $SHUNTER_REGISTRY)")
        return 2
    admin_key = args.admin_key_file.read_text().strip() if args.admin_key_file else args.admin_key
    if not admin_key:
        print("shunter router: give --admin-key, --admin-key-file or $SHUNTER_ADMIN_KEY")
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("shunter router: --tls-cert and --tls-key go together")
        return 2
    if args.processes < 1:
        print("shunter router: --processes must be at least 1")
        return 2
    try:
        settings = _settings(args, admin_key)
    except ValueError as exc:
        print(f"shunter router: {exc}", file=sys.stderr)
        return 2
    if args.processes > 1:
        return run_process_group("router", args)
    if (code := configure_tracing("router", args)) is not None:
        return code
    tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    return run_service(RouterApp(settings), server_settings(args, tls=tls))


def _settings(args: argparse.Namespace, admin_key: str) -> RouterSettings:
    from services.router.settings import RouterSettings

    return RouterSettings(
        registry=args.registry,
        admin_key=admin_key,
        redis_url=args.redis_url,
        key_prefix=args.key_prefix,
        near_cache_bytes=int(args.near_cache_mb * 1024 * 1024),
        request_timeout_s=args.request_timeout_s,
        worker_link=args.worker_link,
        max_message_bytes=args.max_message_bytes,
        payload_log=args.payload_log,
        payload_sample=args.payload_sample,
        payload_log_maxlen=args.payload_log_maxlen,
    )
