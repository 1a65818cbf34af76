"""Checks `shunter up` makes before it starts anything.

A port that is taken or a model that cannot load used to surface only after Redis, the
registry and every worker had started (or never, while `up` waited for a worker that kept
retrying). Both are cheap to find up front, so `up` refuses at once and names the problem.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import ModelConfigError
from services.common.model_config import ModelConfig, parse_model_config, version_config_text


@dataclass(frozen=True)
class VersionPlan:
    """One version `up` will register: its merged config text and parsed config."""

    model: str
    version: str
    text: str
    config: ModelConfig


def port_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound, or "" when it can (port 0 always can)."""
    if port == 0:
        return ""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # The router's gRPC server binds with SO_REUSEADDR, so a port in TIME_WAIT is fine for it too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"--port {port}: {host}:{port} is already in use (pick another port, or --port 0 for a free one)"
            return f"--port {port}: cannot bind {host}:{port}: {exc.strerror or exc}"
    return ""


def check_repository(repository: Path, models: dict[str, list[str]]) -> tuple[list[VersionPlan], list[str]]:
    """Parse every version's config and look for its artifact; return the plans and every problem found."""
    plans: list[VersionPlan] = []
    problems: list[str] = []
    for name, versions in models.items():
        for version in versions:
            try:
                text, source = version_config_text(repository / name, version)
                config = parse_model_config(text, source)
            except ModelConfigError as exc:
                problems.append(f"{name} version {version}: {exc}")
                continue
            artifact = repository / name / version / config.artifact_name
            if not artifact.exists():
                problems.append(
                    f"{name} version {version}: {artifact} is missing "
                    f"(backend {config.backend} loads {config.artifact_name} from the version directory)"
                )
                continue
            plans.append(VersionPlan(name, version, text, config))
    return plans, problems
