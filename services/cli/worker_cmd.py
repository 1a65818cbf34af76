"""`shunter worker`: serve a model repository, or the models the registry assigns.

Its flags come from WorkerSettings, the TLS settings and ServerSettings
(services/common/settings.py): each is also a ``SHUNTER_WORKER_<NAME>`` variable.
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
from services.worker.settings import WorkerSettings

SERVICE = "worker"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a worker (model engines behind dynamic batching)",
        description=(
            "Serve every version in a model repository, or (with --registry) what the registry assigns. "
            "Every flag can also be set by the environment variable named in its help."
        ),
    )
    settings_source.add_arguments(parser, WorkerSettings, SERVICE)
    tls_args.add_serve_args(parser, SERVICE)
    tls_args.add_dial_args(parser, "the registry", SERVICE)
    add_process_args(
        parser,
        ", each with its own copy of the models; in cluster mode each process binds a port of its own "
        "(--port + i, or free ones for 0) and registers itself",
    )
    add_server_args(parser, SERVICE, default_port=8001)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.common.server import run as run_service
    from services.worker.app import ClusterSettings, WorkerApp

    try:
        settings = settings_source.from_args(WorkerSettings, args, SERVICE)
        tls = tls_args.server_tls(args)
        registry_tls = tls_args.client_tls(args)
        server = server_settings(args, SERVICE, tls=tls)
    except settings_source.SettingsError as exc:
        return usage_error(SERVICE, str(exc))
    if args.processes < 1:
        return usage_error(SERVICE, "--processes must be at least 1")
    cluster_mode = settings.registry is not None
    if args.processes > 1:
        if cluster_mode and settings.advertise:
            return usage_error(
                SERVICE, "--advertise names one address; with --processes each process advertises its own"
            )
        # Cluster mode: a port per process, each registered, so routers dial them all.
        return run_process_group(SERVICE, args, server, shared_port=not cluster_mode)
    if (code := configure_tracing(SERVICE, server)) is not None:
        return code
    cluster = ClusterSettings.from_worker_settings(settings, registry_tls) if cluster_mode else None
    only = set(settings.models) or None
    app = WorkerApp(
        repository=settings.model_repository, only_models=only, cluster=cluster, strict=settings.strict,
        admission=settings.admission, engine_nice=settings.engine_nice,
    )
    return run_service(app, server)
