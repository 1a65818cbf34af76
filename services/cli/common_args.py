"""Flags every service shares: where to listen, metrics port, drain grace."""

from __future__ import annotations

import argparse
import sys

from services.common.process_group import REUSE_PORT_FLAG
from services.common.server import DEFAULT_MAX_MESSAGE_BYTES, ServerSettings


def add_server_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help="gRPC port; 0 picks a free one")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port; 0 picks one")
    parser.add_argument("--grace-s", type=float, default=30.0, help="seconds in-flight calls get on SIGTERM")
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest request accepted; bigger ones get RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="export OpenTelemetry traces over OTLP/gRPC to this collector (default: "
        "$OTEL_EXPORTER_OTLP_ENDPOINT; none: tracing off). Sampling: $OTEL_TRACES_SAMPLER[_ARG]",
    )


def configure_tracing(service: str, args: argparse.Namespace) -> int | None:
    """Turn tracing on for this process if asked to; 2 (a usage error, printed) for a bad setting.

    Runs before the service's app is built: the edge takes its interceptors when it is made.
    """
    from services.common import tracing

    try:
        tracing.configure(service, args.otlp_endpoint)
    except tracing.TracingConfigError as exc:
        print(f"shunter {service}: {exc}", file=sys.stderr)
        return 2
    return None


def add_process_args(parser: argparse.ArgumentParser, what: str) -> None:
    """--processes for stateless services (see services/common/process_group.py)."""
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help=f"processes sharing the port (SO_REUSEPORT){what}; each serves whole client connections (default 1)",
    )
    parser.add_argument(REUSE_PORT_FLAG, action="store_true", help=argparse.SUPPRESS)


def run_process_group(service: str, args: argparse.Namespace, shared_port: bool = True) -> int:
    from services.common.process_group import ProcessGroup

    group = ProcessGroup(
        service, args.command_line, args.processes, args.host, args.port, args.metrics_port, args.grace_s, shared_port
    )
    return group.run()


def server_settings(args: argparse.Namespace, **extra) -> ServerSettings:
    return ServerSettings(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        grace_s=args.grace_s,
        max_message_bytes=args.max_message_bytes,
        reuse_port=getattr(args, "reuse_port", False),
        otlp_endpoint=args.otlp_endpoint or "",
        **extra,
    )
