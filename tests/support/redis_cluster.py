"""Real replicated Redis for tests: a Redis Cluster (3 primaries + 3 replicas) and a
primary / replica pair watched by three redis-sentinel processes, all on free loopback
ports, in a temporary directory, killable node by node.

Every node runs with AOF (``appendfsync always``) so a killed and restarted node keeps what
it acknowledged; replication stays asynchronous, which is what the failover tests probe.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import free_port, redis_server_binary


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if not found:
        raise RuntimeError("redis-cli not found (apt-get install redis-tools)")
    return found


def cli(port: int, *args: str, auth: tuple[str, str] | None = None, timeout: float = 10.0) -> str:
    """Run ``redis-cli -p PORT ARGS`` (as ACL user ``auth`` = (user, password)); its stdout."""
    cmd = [_redis_cli(), "-h", "127.0.0.1", "-p", str(port)]
    env = None
    if auth:
        cmd += ["--user", auth[0], "--no-auth-warning"]
        env = {"REDISCLI_AUTH": auth[1], "PATH": "/usr/bin:/bin"}
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, check=True, env=env)
    return out.stdout.strip()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
            return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
    except OSError:
        return False


@dataclass
class Node:
    """One redis-server (or redis-sentinel) process of a test deployment."""

    port: int
    data_dir: Path
    args: list[str]
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "redis.log").open("ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, cwd=self.data_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis on port {self.port} exited: {self.log_tail()}")
            if _answers(self.port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"redis on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data_dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cluster_port() -> int:
    """A free port P with P + 10000 free too (a cluster node's bus port), so P <= 55535."""
    for _attempt in range(200):
        port = free_port()
        if port > 55535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _server_args(port: int, data_dir: Path, *extra: str) -> list[str]:
    return [
        redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
        "--logfile", "", "--repl-diskless-sync-delay", "0", *extra,
    ]


@dataclass
class RedisClusterProcesses:
    """A Redis Cluster of ``primaries`` primaries with one replica each."""

    root: Path
    nodes: list[Node] = field(default_factory=list)
    node_timeout_ms: int = 1000
    #: (user, password) when the nodes run with an ACL file (``start_cluster(acl=...)``).
    auth: tuple[str, str] | None = None

    def cli(self, port: int, *args: str) -> str:
        return cli(port, *args, auth=self.auth)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def roles(self) -> dict[int, str]:
        """port → "master" | "slave" | "fail" for every live node, as the cluster sees it."""
        for node in self.nodes:
            if node.alive:
                break
        else:
            return {}
        out: dict[int, str] = {}
        for line in self.cli(node.port, "cluster", "nodes").splitlines():
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            flags = parts[2]
            out[port] = "fail" if "fail" in flags and "fail?" not in flags else (
                "master" if "master" in flags else "slave")
        return out

    def primaries(self) -> list[Node]:
        roles = self.roles()
        return [n for n in self.nodes if n.alive and roles.get(n.port) == "master"]

    def node_for_slot_of(self, key: str) -> Node:
        port = None
        slot = int(self.cli(self.nodes[0].port if self.nodes[0].alive else self.primaries()[0].port,
                       "cluster", "keyslot", key))
        for node in self.nodes:
            if not node.alive:
                continue
            for line in self.cli(node.port, "cluster", "nodes").splitlines():
                parts = line.split()
                if "master" not in parts[2] or "fail" in parts[2]:
                    continue
                for spec in parts[8:]:
                    lo, _, hi = spec.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            break
        return next(n for n in self.nodes if n.port == port)

    def replica_of(self, primary: Node) -> Node:
        node_id = self.cli(primary.port, "cluster", "myid")
        for line in self.cli(primary.port, "cluster", "nodes").splitlines():
            parts = line.split()
            if parts[3] == node_id:
                port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no replica of {primary.port}")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and every slot has a live primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = [self.cli(n.port, "cluster", "info") for n in self.nodes if n.alive]
                if all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states):
                    return
            except subprocess.SubprocessError:
                pass
            time.sleep(0.1)
        raise TimeoutError("Redis Cluster not healthy in time")

    def wait_promoted(self, dead: Node, timeout: float = 30.0) -> Node:
        """After ``dead`` (a primary) was killed: the replica that took over, once it has."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                roles = self.roles()
                if roles.get(dead.port) in ("fail", None) or roles.get(dead.port) == "slave":
                    self.wait_healthy(timeout=max(0.1, deadline - time.monotonic()))
                    return next(n for n in self.primaries() if n.port != dead.port)
            except (subprocess.SubprocessError, TimeoutError, StopIteration):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"no replica promoted after {dead.port} died")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(primaries: int = 3, node_timeout_ms: int = 1000, acl: str = "",
                  auth: tuple[str, str] | None = None) -> RedisClusterProcesses:
    """Start ``2 × primaries`` nodes and join them with ``redis-cli --cluster create``.

    ``acl``: the text of an ACL file every node loads; ``auth`` = (user, password) of a user
    in it with every right, which replicas and these helpers use.
    """
    root = Path(tempfile.mkdtemp(prefix="shunter-redis-cluster-"))
    cluster = RedisClusterProcesses(root=root, node_timeout_ms=node_timeout_ms, auth=auth)
    extra: list[str] = []
    if acl:
        (root / "users.acl").write_text(acl)
        extra = ["--aclfile", str(root / "users.acl"), "--masteruser", auth[0], "--masterauth", auth[1]]
    try:
        for index in range(primaries * 2):
            port = cluster_port()
            data = root / f"node-{index}"
            node = Node(port, data, _server_args(
                port, data, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # A replica that lost touch takes over whatever its lag (tests kill primaries).
                "--cluster-replica-validity-factor", "0", *extra,
            ))
            node.start()
            cluster.nodes.append(node)
        login = ["--user", auth[0], "--no-auth-warning"] if auth else []
        subprocess.run(
            [_redis_cli(), *login, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in cluster.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=True,
            env={"REDISCLI_AUTH": auth[1], "PATH": "/usr/bin:/bin"} if auth else None,
        )
        cluster.wait_healthy()
        # Every replica attached and synced before a test starts killing primaries.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            roles = cluster.roles()
            replicas = [n for n in cluster.nodes if roles.get(n.port) == "slave"]
            if len(replicas) == primaries and all(
                    "master_link_status:up" in cluster.cli(n.port, "info", "replication") for n in replicas):
                break
            time.sleep(0.1)
        return cluster
    except BaseException:
        cluster.stop()
        raise


@dataclass
class SentinelProcesses:
    """A primary, its replicas and three sentinels watching them under ``master_name``."""

    root: Path
    master_name: str
    servers: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def master_port(self) -> int:
        for sentinel in self.sentinels:
            if sentinel.alive:
                reply = cli(sentinel.port, "sentinel", "get-master-addr-by-name", self.master_name).split()
                return int(reply[1])
        raise RuntimeError("no sentinel alive")

    def master(self) -> Node:
        port = self.master_port()
        return next(n for n in self.servers if n.port == port)

    def wait_failover(self, old: Node, timeout: float = 30.0) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.master_port()
                if port != old.port:
                    new = next(n for n in self.servers if n.port == port)
                    if "role:master" in cli(port, "info", "replication"):
                        return new
            except (subprocess.SubprocessError, RuntimeError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"sentinels did not fail over from {old.port}")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def start_sentinel(master_name: str = "shunter", down_after_ms: int = 1000, replicas: int = 1,
                   quorum_ready: bool = True) -> SentinelProcesses:
    """Start a primary, ``replicas`` replicas and three sentinels.

    ``quorum_ready``: also wait until the sentinels know each other (a few seconds of hello
    messages; a manual ``SENTINEL FAILOVER`` needs no quorum). With two replicas the one not
    promoted is re-pointed at the new master as part of the failover, so the new master has a
    replica at once (the old master is re-attached only later).
    """
    root = Path(tempfile.mkdtemp(prefix="shunter-redis-sentinel-"))
    deploy = SentinelProcesses(root=root, master_name=master_name)
    try:
        primary_port = free_port()
        primary = Node(primary_port, root / "primary", _server_args(primary_port, root / "primary"))
        primary.start()
        deploy.servers.append(primary)
        for index in range(replicas):
            port = free_port()
            data = root / f"replica-{index}"
            replica = Node(port, data, _server_args(port, data, "--replicaof", "127.0.0.1", str(primary_port)))
            replica.start()
            deploy.servers.append(replica)
        deadline = time.monotonic() + 30
        for replica in deploy.servers[1:]:
            while "master_link_status:up" not in cli(replica.port, "info", "replication"):
                if time.monotonic() > deadline:
                    raise TimeoutError("replica did not sync")
                time.sleep(0.05)
        for index in range(3):
            port = free_port()
            data = root / f"sentinel-{index}"
            data.mkdir(parents=True)
            conf = data / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {data}\n"
                f"sentinel monitor {master_name} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                f"sentinel failover-timeout {master_name} 5000\n"
                f"sentinel parallel-syncs {master_name} {replicas}\n"
            )
            node = Node(port, data, [redis_server_binary(), str(conf), "--sentinel"])
            node.start()
            deploy.sentinels.append(node)
        # Every sentinel has found the replicas (and the others) before a test relies on them.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            infos = [cli(s.port, "sentinel", "master", master_name) for s in deploy.sentinels]
            if all(_field(i, "num-slaves") == str(replicas)
                   and (not quorum_ready or _field(i, "num-other-sentinels") == "2") for i in infos):
                return deploy
            time.sleep(0.1)
        raise TimeoutError("sentinels did not discover each other and the replicas")
    except BaseException:
        deploy.stop()
        raise


def _field(reply: str, name: str) -> str:
    lines = reply.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line == name:
            return lines[i + 1]
    return ""
