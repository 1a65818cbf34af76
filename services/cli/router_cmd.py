"""`shunter router`: the stateless front door (auth, limits, splits, cache, balancing)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.cli.admission_args import add_admission_args, admission_settings
from services.cli.common_args import add_process_args, add_server_args, run_process_group, server_settings
from services.router.settings import WORKER_LINKS


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
    add_admission_args(parser, "router", queue_wait=False)
    group = parser.add_argument_group("workers: per-worker cap, liveness, latency outliers")
    group.add_argument(
        "--max-in-flight-per-worker", type=int,
        default=os.environ.get("SHUNTER_ROUTER_MAX_IN_FLIGHT_PER_WORKER", "0"),
        help="requests one worker may hold from this router; with every worker of a version at it, "
        "requests are refused at once with UNAVAILABLE (default 0: no cap)",
    )
    group.add_argument(
        "--liveness-interval-s", type=float, default=1.0,
        help="stream link: ping a worker that has sent nothing for this long while requests wait (default 1)",
    )
    group.add_argument(
        "--liveness-timeout-s", type=float, default=2.0,
        help="stream link: a worker silent this long after a ping is hung; its requests are retried "
        "elsewhere (default 2)",
    )
    group.add_argument(
        "--outlier-ratio", type=float, default=3.0,
        help="eject a worker whose latency is over this many times its peers' median (default 3; 0: never)",
    )
    group.add_argument(
        "--outlier-cooloff-s", type=float, default=10.0, help="how long a latency outlier is avoided (default 10)"
    )
    group.add_argument(
        "--hedge-model", action="append", default=[], metavar="MODEL",
        help="MODEL's requests are idempotent: one not answered after --hedge-after-s also goes to a second "
        "worker, the first answer wins (repeatable; default none)",
    )
    group.add_argument(
        "--hedge-after-s", type=float, default=0.05, help="how long a hedged request waits before its second "
        "attempt (default 0.05)",
    )
    add_process_args(parser, "")
    add_server_args(parser, default_port=8001)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.common.server import TlsConfig
    from services.common.server import run as run_service
    from services.router.app import RouterApp
    from services.router.settings import RouterSettings

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
    if args.processes > 1:
        return run_process_group("router", args)
    tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    try:
        settings = RouterSettings(
            registry=args.registry,
            admin_key=admin_key,
            redis_url=args.redis_url,
            key_prefix=args.key_prefix,
            near_cache_bytes=int(args.near_cache_mb * 1024 * 1024),
            request_timeout_s=args.request_timeout_s,
            worker_link=args.worker_link,
            max_message_bytes=args.max_message_bytes,
            admission=admission_settings(args),
            max_in_flight_per_worker=args.max_in_flight_per_worker,
            liveness_interval_s=args.liveness_interval_s,
            liveness_timeout_s=args.liveness_timeout_s,
            outlier_ratio=args.outlier_ratio,
            outlier_cooloff_s=args.outlier_cooloff_s,
            hedge_models=tuple(args.hedge_model),
            hedge_after_s=args.hedge_after_s,
        )
    except ValueError as exc:
        print(f"shunter router: {exc}", file=sys.stderr)
        return 2
    return run_service(RouterApp(settings), server_settings(args, tls=tls))
