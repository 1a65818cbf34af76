"""The `shunter` command: one face over every service and tool.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable taking the parsed args and returning the
exit code. Heavy imports happen inside those callables, so `shunter --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules under services.cli that add subcommands, in help order.
COMMAND_MODULES = (
    "worker_cmd",
    "bench_cmd",
    "router_cmd",
    "up_cmd",
    "registry_cmd",
    "admin_cmds",
    "rollout_cmd",
    "batch_cmd",
    "stream_cmd",
    "optimize_cmd",
    "drift_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shunter", description="Serve ML models at scale over gRPC.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"services.cli.{module_name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line as given, for commands that start copies of themselves.
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
