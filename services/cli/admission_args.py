"""Admission flags shared by `shunter worker` and `shunter router` (services/common/admission.py)."""

from __future__ import annotations

import argparse
import os

from services.common.admission import AdmissionSettings

_DEFAULTS = AdmissionSettings()


def _env(service: str, name: str, default: object) -> str:
    """The default as a string: argparse converts it with the flag's type when the command
    runs, so a bad value in the environment is a usage error of that command (exit 2)."""
    return os.environ.get(f"SHUNTER_{service.upper()}_{name.upper()}", str(default))


def add_admission_args(parser: argparse.ArgumentParser, service: str, queue_wait: bool = True) -> None:
    """--max-in-flight, --max-in-flight-per-version, --max-queue-wait-s, --no-deadline-admission.

    Each also reads $SHUNTER_<SERVICE>_<NAME> (e.g. SHUNTER_WORKER_MAX_IN_FLIGHT).
    ``queue_wait``: offer --max-queue-wait-s (workers: their batchers know their queues in
    time; a router would have to estimate it, and an estimate from the concurrency it
    admits itself settles too low for a batching model, so routers do not offer it).
    """
    group = parser.add_argument_group("admission (refuse at once with UNAVAILABLE instead of queueing)")
    group.add_argument(
        "--max-in-flight", type=int, default=_env(service, "max_in_flight", _DEFAULTS.max_in_flight),
        help="inference requests this process holds at once, counted from arrival (default 0: no bound)",
    )
    group.add_argument(
        "--max-in-flight-per-version", type=int,
        default=_env(service, "max_in_flight_per_version", _DEFAULTS.max_in_flight_per_version),
        help="inference requests one model version holds at once in this process (default 0: no bound)",
    )
    if queue_wait:
        group.add_argument(
            "--max-queue-wait-s", type=float,
            default=_env(service, "max_queue_wait_s", _DEFAULTS.max_queue_wait_s),
            help="refuse a request whose expected wait in its version's queue (rows ahead / batch size x "
            "observed batch time) is longer than this, in seconds (default 0: only the request's own "
            "deadline bounds it)",
        )
    group.add_argument(
        "--no-deadline-admission", dest="deadline_admission", action="store_false",
        default=_env(service, "deadline_admission", "1") not in ("0", "false", "no"),
        help="admit a request even when its expected wait is longer than its remaining deadline",
    )


def admission_settings(args: argparse.Namespace) -> AdmissionSettings:
    """The settings the flags give; ValueError (with the setting named) for a bad value."""
    return AdmissionSettings(
        max_in_flight=args.max_in_flight,
        max_in_flight_per_version=args.max_in_flight_per_version,
        max_queue_wait_s=getattr(args, "max_queue_wait_s", 0.0),
        deadline_aware=args.deadline_admission,
    )
