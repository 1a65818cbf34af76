"""`shunter worker|router --processes N`: N processes of one service behind one port.

Why: one Python process answers a few thousand gRPC calls per second (grpc.aio's per-call
cost runs on one event-loop thread), far fewer single-row requests than a GPU, or a
many-core CPU, can compute once they are batched. N processes (each worker with its own
copy of the models) bind the same port with SO_REUSEPORT, and the kernel spreads incoming
connections over them: each client connection (a gRPC channel) is served by one process,
so the gain needs at least N client connections (several clients, several router
channels, or a load generator with several processes).

The supervisor (this module) does no serving itself. It starts the children, prints the
one readiness line once every child has printed its own, passes SIGTERM/SIGINT on so each
child drains as a single worker does, and, if a child dies, stops the rest and exits
non-zero: a half-alive worker group is not something an orchestrator can see or fix, a
dead one it restarts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.common.ready_line import format_ready_line, parse_ready_line

#: The hidden flag that tells a child to bind with SO_REUSEPORT (the supervisor passes it).
REUSE_PORT_FLAG = "--reuse-port"
#: Set in each child's environment: the supervisor's pid, which the child must not outlive.
GROUP_PID_ENV = "SHUNTER_GROUP_PID"
_PR_SET_PDEATHSIG = 1
#: Extra seconds beyond the drain grace before a child that ignores SIGTERM is killed.
KILL_AFTER_S = 10.0


class ProcessGroupError(Exception):
    """A child failed to start or died; the message names which and how."""


@dataclass
class Child:
    index: int
    process: subprocess.Popen
    ready: threading.Event = field(default_factory=threading.Event)
    address: str = ""
    metrics: str = ""


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket on host:port; port 0 picks a free one.

    Holding it until the children listen keeps another program from taking a picked port
    in between, and a port already held without SO_REUSEPORT fails here, with a clear
    message, rather than in N children at once.
    """
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((bare, port))
    except OSError as exc:
        sock.close()
        raise ProcessGroupError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def child_argv(argv: Sequence[str], port: int, metrics_port: int, shared_port: bool = True) -> list[str]:
    """The child's command line: the parent's, with one process, the chosen ports and, when
    the port is shared, reuse-port."""
    rest = _without_options(list(argv), {"--processes": True, "--port": True, "--metrics-port": True})
    return [
        sys.executable,
        "-m",
        "services.cli.main",
        *rest,
        "--processes",
        "1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        *([REUSE_PORT_FLAG] if shared_port else []),
    ]


def _without_options(argv: list[str], takes_value: dict[str, bool]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name, has_equals, _ = arg.partition("=")
        if name in takes_value:
            skip = takes_value[name] and not has_equals
            continue
        out.append(arg)
    return out


class ProcessGroup:
    """N children of one service on one port; see the module docstring for why and how.

    With ``shared_port`` False (cluster-mode workers) each child binds a port of its own
    (``port + i``, or a free one for port 0) and registers that address itself, so routers
    dial every process directly and spread their calls evenly; the readiness line then
    names the first child's address.
    """

    def __init__(
        self,
        service: str,
        argv: Sequence[str],
        processes: int,
        host: str,
        port: int,
        metrics_port: int,
        grace_s: float,
        shared_port: bool = True,
    ):
        self._service = service
        self._shared_port = shared_port
        self._argv = list(argv)
        self._processes = processes
        self._host = host
        self._port = port
        self._metrics_port = metrics_port
        self._grace_s = grace_s
        self._children: list[Child] = []
        self._stopping = threading.Event()
        #: Set when any child exits, so the main thread wakes up at once.
        self._changed = threading.Event()

    def run(self) -> int:
        """Blocking: start, supervise and stop the children; the exit code for the CLI."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        reserved = reserve_port(self._host, self._port) if self._shared_port else None
        try:
            for index in range(self._processes):
                metrics = self._metrics_port + index if self._metrics_port else 0
                if reserved is not None:
                    port = reserved.getsockname()[1]
                else:
                    port = self._port + index if self._port else 0
                self._start_child(index, child_argv(self._argv, port, metrics, self._shared_port))
            self._wait_ready()
        except ProcessGroupError as exc:
            self._stop_children()
            print(f"shunter {self._service}: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            if reserved is not None:
                reserved.close()
        for child in self._children:
            print(
                f"# {self._service} process {child.index} pid {child.process.pid} address {child.address} "
                f"metrics {child.metrics}",
                flush=True,
            )
        first = self._children[0]
        print(format_ready_line(self._service, first.address, first.metrics), flush=True)
        return self._supervise()

    def request_stop(self, *_: object) -> None:
        self._stopping.set()
        self._changed.set()

    # -- internals ----------------------------------------------------------------------

    def _start_child(self, index: int, argv: list[str]) -> None:
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only, which
        # stops the children in order (SIGTERM, drain) instead of racing them.
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env={**os.environ, GROUP_PID_ENV: str(os.getpid())},
            process_group=0,
        )
        child = Child(index, process)
        self._children.append(child)
        threading.Thread(target=self._pump, args=(child,), name=f"worker-{index}-stdout", daemon=True).start()

    def _pump(self, child: Child) -> None:
        """Swallow the child's readiness line (the group prints one); pass anything else on."""
        assert child.process.stdout is not None
        for line in child.process.stdout:
            announced = parse_ready_line(line)
            if announced and not child.ready.is_set():
                child.address = announced.address
                child.metrics = announced.metrics
                child.ready.set()
                self._changed.set()
            else:
                sys.stdout.write(line)
                sys.stdout.flush()
        child.process.wait()
        self._changed.set()

    def _wait_ready(self) -> None:
        while not all(child.ready.is_set() for child in self._children):
            if self._stopping.is_set():
                raise ProcessGroupError("stopped before every process was ready")
            for child in self._children:
                code = child.process.poll()
                if code is not None:
                    raise ProcessGroupError(f"process {child.index} exited with code {code} before it was ready")
            self._changed.wait(0.1)
            self._changed.clear()

    def _supervise(self) -> int:
        while not self._stopping.is_set():
            dead = [c for c in self._children if c.process.poll() is not None]
            if dead:
                child = dead[0]
                print(
                    f"shunter {self._service}: process {child.index} (pid {child.process.pid}) exited with code "
                    f"{child.process.returncode}; stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                self._stop_children()
                return 1
            self._changed.wait(1.0)
            self._changed.clear()
        codes = self._stop_children()
        return 0 if all(code == 0 for code in codes) else 1

    def _stop_children(self) -> list[int]:
        """SIGTERM every live child (each drains), then wait; kill what outlives the grace."""
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s + KILL_AFTER_S
        codes = []
        for child in self._children:
            try:
                codes.append(child.process.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                child.process.kill()
                codes.append(child.process.wait())
        return codes


def die_with_group() -> None:
    """In a child: get SIGTERM (and so drain) when the supervisor dies, even by SIGKILL.

    Without it a killed supervisor would leave its children serving on the port, out of
    anyone's reach. Linux only (prctl); elsewhere children outlive a killed supervisor.
    """
    parent = os.environ.get(GROUP_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
