"""Test hosts in network namespaces: a bridge in the root namespace and one namespace per
host on a veth pair, so traffic between the parts crosses real interfaces.

Partitions are link states (the root end of a host's veth down: the host vanishes without
a reset, as behind a failed switch port). The kernels these tests run on may lack netem,
so a delay is a delay line (delay_line.py) in the host's namespace, in front of its port.
Everything made here carries a per-run tag and is removed by ``close()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"shunter-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    veth = _ip("link", "add", f"shp{os.getpid() % 100000}a", "type", "veth", "peer", "name",
               f"shp{os.getpid() % 100000}b", check=False)
    if veth.returncode != 0:
        return f"cannot make veth pairs: {veth.stderr.strip()}"
    _ip("link", "del", f"shp{os.getpid() % 100000}a", check=False)
    return None


@dataclass
class Host:
    name: str
    namespace: str
    ip: str
    root_link: str

    @property
    def wrapper(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace)


@dataclass
class Network:
    """A /24 on a bridge; hosts get .10, .11, ...; the root namespace (the test) is .1."""

    tag: str = field(default_factory=lambda: f"s{os.getpid() % 100000}")
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: str = ""
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    def open(self) -> Network:
        used = _ip("-4", "addr").stdout
        third = next(n for n in range(((os.getpid() % 200) + 20), 256) if f"10.213.{n}." not in used)
        self.subnet = f"10.213.{third}"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        index = len(self.hosts)
        namespace = f"shunter-{self.tag}-{name}"
        root_link, host_link = f"{self.tag}h{index}", f"{self.tag}n{index}"
        _ip("netns", "add", namespace)
        _ip("link", "add", root_link, "type", "veth", "peer", "name", host_link)
        _ip("link", "set", host_link, "netns", namespace)
        _ip("link", "set", root_link, "master", self.bridge)
        _ip("link", "set", root_link, "up")
        ip = f"{self.subnet}.{10 + index}"
        _ip("-n", namespace, "addr", "add", f"{ip}/24", "dev", host_link)
        _ip("-n", namespace, "link", "set", host_link, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        host = self.hosts[name] = Host(name, namespace, ip, root_link)
        return host

    def cut(self, host: Host) -> None:
        """Partition the host: its link to the bridge goes down (packets vanish, no reset)."""
        _ip("link", "set", host.root_link, "down")

    def restore(self, host: Host) -> None:
        _ip("link", "set", host.root_link, "up")

    def run(self, host: Host, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen([*host.wrapper, *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def start_delay_line(self, host: Host, listen_port: int, target_port: int) -> subprocess.Popen:
        """A delay line on host:listen_port → host:target_port; SIGUSR1 adds 50 ms, SIGUSR2 removes it."""
        proc = self.run(
            host,
            [sys.executable, str(ROOT / "tests" / "support" / "delay_line.py"), host.ip, str(listen_port),
             str(target_port)],
            stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for host in self.hosts.values():
            # Anything still running inside (a service a test started) goes with it.
            pids = _ip("netns", "pids", host.namespace, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("link", "del", host.root_link, check=False)
            _ip("netns", "del", host.namespace, check=False)
        _ip("link", "del", self.bridge, check=False)
        time.sleep(0.1)
