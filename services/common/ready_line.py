"""The line a Shunter server prints once it serves, and the free ports tools start servers on.

Every server binds port 0 and announces where it landed with one line on stdout:
``shunter <service> listening on HOST:PORT metrics HOST:PORT``. ``shunter up``, the
multi-process worker's supervisor, the benchmarks and the tests all wait for it, so the
format and its parser live here, once.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

READY_LINE = re.compile(r"^shunter (\w+) listening on (\S+):(\d+) metrics (\S+):(\d+)$")


@dataclass(frozen=True, slots=True)
class ReadyLine:
    service: str
    host: str
    port: int
    metrics_host: str
    metrics_port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics(self) -> str:
        return f"{self.metrics_host}:{self.metrics_port}"


def format_ready_line(service: str, address: str, metrics: str) -> str:
    return f"shunter {service} listening on {address} metrics {metrics}"


def parse_ready_line(line: str) -> ReadyLine | None:
    """The announcement in ``line`` (surrounding whitespace ignored), or None for any other line."""
    match = READY_LINE.match(line.strip())
    if match is None:
        return None
    service, host, port, metrics_host, metrics_port = match.groups()
    return ReadyLine(service, host, int(port), metrics_host, int(metrics_port))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (only for servers that cannot bind port 0 themselves)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
