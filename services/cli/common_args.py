"""What every service command shares: its server flags, --processes, and how it reports bad settings."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from services.common import settings as settings_source
from services.common.process_group import REUSE_PORT_FLAG
from services.common.server import ServerSettings


def add_server_args(parser: argparse.ArgumentParser, service: str, default_port: int) -> None:
    settings_source.add_arguments(parser, ServerSettings, service, defaults={"port": default_port})
    parser.set_defaults(default_port=default_port)


def add_process_args(parser: argparse.ArgumentParser, what: str) -> None:
    """--processes for stateless services (see services/common/process_group.py)."""
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help=f"processes sharing the port (SO_REUSEPORT){what}; each serves whole client connections (default 1)",
    )
    parser.add_argument(REUSE_PORT_FLAG, action="store_true", help=argparse.SUPPRESS)


def server_settings(args: argparse.Namespace, service: str, **extra: Any) -> ServerSettings:
    """The server settings a command was given (SettingsError if one is malformed)."""
    return settings_source.from_args(
        ServerSettings,
        args,
        service,
        defaults={"port": args.default_port},
        reuse_port=getattr(args, "reuse_port", False),
        **extra,
    )


def run_process_group(service: str, args: argparse.Namespace, server: ServerSettings, shared_port: bool = True) -> int:
    from services.common.process_group import ProcessGroup

    group = ProcessGroup(
        service, args.command_line, args.processes, server.host, server.port, server.metrics_port, server.grace_s,
        shared_port,
    )
    return group.run()


def configure_tracing(service: str, server: ServerSettings) -> int | None:
    """Turn tracing on for this process if asked to; 2 (a usage error, printed) for a bad setting.

    Runs before the service's app is built: the edge takes its interceptors when it is made.
    """
    from services.common import tracing

    try:
        tracing.configure(service, server.otlp_endpoint)
    except tracing.TracingConfigError as exc:
        return usage_error(service, str(exc))
    return None


def usage_error(command: str, message: str) -> int:
    """Print a command-line mistake the way argparse does (stderr) and return its exit code, 2."""
    print(f"shunter {command}: {message}", file=sys.stderr)
    return 2
