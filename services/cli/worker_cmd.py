"""`shunter worker`: serve a model repository, or the models the registry assigns."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.cli.common_args import (
    add_process_args,
    add_server_args,
    configure_tracing,
    run_process_group,
    server_settings,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a worker (model engines behind dynamic batching)",
        description="Serve every version in a model repository, or (with --registry) what the registry assigns.",
    )
    parser.add_argument("--model-repository", type=Path, help="directory of <model>/config.yaml and <model>/<N>/")
    parser.add_argument("--models", help="comma-separated subset of the repository's models to serve")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="standalone: stop if any version fails to load (default: serve the others, mark it UNAVAILABLE)",
    )
    parser.add_argument("--registry", default=None, help="registry HOST:PORT: run in cluster mode")
    parser.add_argument("--serve", help="cluster mode: comma-separated model names to serve")
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("SHUNTER_ADMIN_KEY"),
        help="cluster mode: key for the registry (default $SHUNTER_ADMIN_KEY)",
    )
    parser.add_argument("--lease-ttl-s", type=int, default=0, help="cluster mode: lease TTL (0: registry default)")
    parser.add_argument("--advertise", default=None, help="cluster mode: HOST:PORT routers dial (default: bound)")
    parser.add_argument(
        "--trusted-repository",
        action="append",
        type=Path,
        default=[],
        help="cluster mode: a directory whose python handlers may run (repeatable)",
    )
    parser.add_argument(
        "--artifact-root", action="append", type=Path, default=[], metavar="DIR",
        help="cluster mode: read artifacts only from inside DIR (repeatable; none: any local path)",
    )
    parser.add_argument(
        "--load-timeout-s", type=float, default=900.0,
        help="cluster mode: refuse a version that has not loaded and warmed up after this many seconds (default 900)",
    )
    add_process_args(
        parser,
        ", each with its own copy of the models; in cluster mode each process binds a port of its own "
        "(--port + i, or free ones for 0) and registers itself",
    )
    add_server_args(parser, default_port=8001)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.common.server import run as run_service
    from services.worker.app import ClusterSettings, WorkerApp

    if args.registry is None and args.model_repository is None:
        print("shunter worker: give --model-repository DIR, or --registry HOST:PORT with --serve NAMES")
        return 2
    if args.processes < 1:
        print("shunter worker: --processes must be at least 1")
        return 2
    if args.processes > 1:
        if args.registry is not None and args.advertise:
            print("shunter worker: --advertise names one address; with --processes each process advertises its own")
            return 2
        # Cluster mode: a port per process, each registered, so routers dial them all.
        return run_process_group("worker", args, shared_port=args.registry is None)
    if (code := configure_tracing("worker", args)) is not None:
        return code
    cluster = None
    if args.registry is not None:
        if args.load_timeout_s <= 0:
            print("shunter worker: --load-timeout-s must be positive")
            return 2
        if not args.serve:
            print("shunter worker: --registry needs --serve NAME[,NAME]")
            return 2
        if not args.admin_key:
            print("shunter worker: --registry needs --admin-key or $SHUNTER_ADMIN_KEY")
            return 2
        cluster = ClusterSettings(
            registry_address=args.registry,
            admin_key=args.admin_key,
            serve_models=tuple(n.strip() for n in args.serve.split(",") if n.strip()),
            lease_ttl_s=args.lease_ttl_s,
            advertise_address=args.advertise,
            trusted_repositories=tuple(p.resolve() for p in args.trusted_repository),
            artifact_roots=tuple(p.resolve() for p in args.artifact_root),
            load_timeout_s=args.load_timeout_s,
        )
    only = {n.strip() for n in args.models.split(",") if n.strip()} if args.models else None
    app = WorkerApp(repository=args.model_repository, only_models=only, cluster=cluster, strict=args.strict)
    return run_service(app, server_settings(args))
