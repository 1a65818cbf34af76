"""The servers the runner measures: Shunter workers and clusters, Triton and MLServer peers.

Each runs in its own session with its output in a log file. Readiness is the line each
server prints, then ServerReady and ModelReady over gRPC for every model (the same check
for every system); servers are launched together and then waited for, so start-up costs
one slow start, not their sum. CPU time is read from /proc (psutil) for a server's whole
process tree: "CPU per request, all processes together". Peers get their own venv under
.bench-venvs/ (pip, the packages matrix.yaml lists plus this venv's onnxruntime and
tokenizers) and serve the very ONNX files Shunter serves (peers/ort_model.py).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.common.model_config import load_version_config  # noqa: E402
from services.common.ready_line import free_port, parse_ready_line  # noqa: E402
from services.gen.inference import grpc_service_pb2 as pb  # noqa: E402
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

VENVS = ROOT / ".bench-venvs"
PEERS_DIR = Path(__file__).resolve().with_name("peers")
#: Same engine builds in every peer's venv as in ours, so the model code is identical.
SHARED_PACKAGES = ("onnxruntime", "tokenizers")
T = TypeVar("T")


@dataclass
class Server:
    """One running server: its root process, log, address and what its ready line said."""

    name: str
    proc: subprocess.Popen
    log: Path
    models: tuple[str, ...]
    parse_ready: Callable[[str], dict[str, Any] | None]
    address: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self, match: str | None = None) -> float:
        """User + system seconds of the process tree (or of the processes whose command line has ``match``)."""
        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                if match is None or match in " ".join(proc.cmdline()):
                    times = proc.cpu_times()
                    total += times.user + times.system
        return total

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace_s: float = 40.0) -> None:
        """SIGTERM (the server drains and stops its children), then SIGKILL the session."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # helpers that outlived their parent share its session
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def launch(name: str, argv: list[str], log_dir: Path, models: Iterable[str], parse_ready: Any, **kw: Any) -> Server:
    """Start a server process (not yet ready: see wait_ready)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=kw.get("cwd", ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **kw.get("env", {})},
            start_new_session=True,
        )
    return Server(name, proc, log, tuple(models), parse_ready)


def wait_ready(servers: list[Server], timeout_s: float = 300.0) -> dict[str, str]:
    """Wait for every server; returns {name: why} for those that failed (and stops them)."""
    pending, failed = list(servers), {}
    deadline = time.monotonic() + timeout_s
    while pending:
        for server in list(pending):
            text = server.log.read_text(errors="replace") if server.log.exists() else ""
            info = server.parse_ready(text)
            if info is not None:
                server.info.update(info)
                server.address = info["address"]
                error = _confirm_ready(server, deadline)
            elif not server.alive():
                error = f"exited with code {server.proc.returncode} before it was ready:\n{server.log_tail()}"
            elif time.monotonic() > deadline:
                error = f"not ready after {timeout_s:.0f} s:\n{server.log_tail()}"
            else:
                continue
            pending.remove(server)
            if error:
                failed[server.name] = error
                server.stop()
        time.sleep(0.2 if pending else 0)
    return failed


def _confirm_ready(server: Server, deadline: float) -> str | None:
    metadata = tuple(server.info.get("grpc_metadata", ()))
    last = "no answer"
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline and server.alive():
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=5, metadata=metadata).ready and all(
                    stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=5, metadata=metadata).ready
                    for m in server.models
                ):
                    meta = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5, metadata=metadata)
                    server.metadata = {"name": meta.name, "version": meta.version}
                    return None
                last = "ServerReady/ModelReady said not ready"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.3)
    return f"did not answer ready over gRPC at {server.address} ({last}):\n{server.log_tail()}"


def model_statistics(server: Server, model: str) -> dict[str, int] | None:
    """A worker's counters for ``model`` so far: rows (inferences) and batches (executions)
    executed, and the nanoseconds its successful requests spent in its handler, queued and
    computing, each summed over requests."""
    try:
        with grpc.insecure_channel(server.address) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(name=model), timeout=10
            )
    except grpc.RpcError:
        return None
    stats = reply.model_stats
    return {
        "inferences": sum(s.inference_count for s in stats),
        "executions": sum(s.execution_count for s in stats),
        "handler_ns": sum(s.inference_stats.success.ns for s in stats),
        "queue_ns": sum(s.inference_stats.queue.ns for s in stats),
        "compute_ns": sum(
            i.compute_input.ns + i.compute_infer.ns + i.compute_output.ns for i in (s.inference_stats for s in stats)
        ),
    }


def main_thread_schedstat(server: Server) -> tuple[float, float] | None:
    """Seconds the server's main thread (a Shunter worker's event loop) has run on a CPU and
    waited for one (Linux schedstat): how much of the loop's time a busy machine takes."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


# ---------------------------------------------------------------- Shunter


def shunter(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", *args]


def ready_line(service: str, **info: Any) -> Callable[[str], dict[str, Any] | None]:
    """A log's parser for the ready line ``service`` prints; ``info`` goes with its address."""

    def parse(text: str) -> dict[str, Any] | None:
        for line in text.splitlines():
            announced = parse_ready_line(line)
            if announced and announced.service == service:
                return {"address": announced.address, **info}
        return None

    return parse


def launch_worker(name: str, repository: Path, models: Iterable[str], log_dir: Path, processes: int = 1) -> Server:
    extra = ("--processes", str(processes)) if processes > 1 else ()
    argv = shunter("worker", "--model-repository", str(repository), "--port", "0", "--metrics-port", "0", *extra)
    return launch(name, argv, log_dir, models, ready_line("worker"))


def launch_relay(name: str, worker: str, key: str, models: Iterable[str], log_dir: Path) -> Server:
    """The bare grpc.aio relay (passthrough_proxy.py) in front of ``worker``, presenting ``key``."""

    def ready(text: str) -> dict[str, Any] | None:
        found = re.search(r"^relay port (\d+)$", text, re.MULTILINE)
        return {"address": f"127.0.0.1:{found.group(1)}"} if found else None

    argv = [sys.executable, str(Path(__file__).with_name("passthrough_proxy.py")), worker]
    return launch(name, argv, log_dir, models, ready, env={"SHUNTER_PROXY_KEY": key})


def _cluster_ready(text: str) -> dict[str, Any] | None:
    if "# Ctrl-C" not in text:
        return None
    env = dict(
        line[len("export ") :].strip().partition("=")[::2] for line in text.splitlines() if line.startswith("export ")
    )
    workers = [line.split()[2] for line in text.splitlines() if re.match(r"^#\s+worker-\d+ ", line)]
    return {
        "address": env["SHUNTER_ROUTER"],
        "registry": env["SHUNTER_REGISTRY"],
        "admin_key": env["SHUNTER_ADMIN_KEY"],
        "api_key": env["SHUNTER_API_KEY"],
        "workers": workers,
        "grpc_metadata": (("authorization", f"Bearer {env['SHUNTER_API_KEY']}"),),
        "exports": env,
    }


def launch_cluster(
    name: str, repository: Path, models: Iterable[str], workers: int, log_dir: Path, *extra: str, **kw: Any
) -> Server:
    """`shunter up`: Redis, registry, ``workers`` workers and a router, as a user starts it."""
    argv = shunter("up", "--model-repository", str(repository), "--workers", str(workers), "--port", "0", *extra)
    return launch(name, [*argv, "--run-dir", str(log_dir / f"{name}-run")], log_dir, models, _cluster_ready, **kw)


def start_ready(servers: list[Server], timeout_s: float = 300.0) -> None:
    """wait_ready for the cost probes: any server that fails to start ends the probe, with its log."""
    failed = wait_ready(servers, timeout_s)
    if failed:
        stop_all(servers)
        raise SystemExit("\n".join(f"{name}: {why}" for name, why in failed.items()))


def stop_all(servers: Iterable[Server], grace_s: float = 40.0) -> None:
    """All at once: each drains within its grace, so stopping costs one grace, not their sum."""
    threads = [threading.Thread(target=s.stop, args=(grace_s,)) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def abba(settings: Sequence[T], rounds: int) -> Iterator[T]:
    """The cost probes' A/B order: every setting once a round, reversed every other round, so a
    machine whose load drifts, or a server still warming up, favours none of them."""
    for index in range(rounds):
        yield from settings if index % 2 == 0 else settings[::-1]


def enable_cache(cluster: Server, model: str, ttl_s: int = 3600) -> None:
    """Turn the router's response cache on for ``model`` (routers learn it over their watch)."""
    import asyncio

    from services.common.registry_client import RegistryClient

    async def turn_on() -> None:
        async with RegistryClient(cluster.info["registry"], cluster.info["admin_key"]) as client:
            policy = await client.get_traffic_policy(model)
            policy.cache_enabled, policy.cache_ttl_s = True, ttl_s
            await client.set_traffic_policy(policy)

    asyncio.run(turn_on())
    time.sleep(1.5)


# ---------------------------------------------------------------- peers


def venv_python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def venv_versions(python: Path, names: Iterable[str]) -> dict[str, str]:
    """Package versions inside a virtual environment (ours: sys.executable)."""
    code = (
        "import importlib.metadata as m, json, sys\nout = {}\nfor n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    names = list(names)
    try:
        done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return dict.fromkeys(names, "unknown")


def install(peer: str, spec: dict[str, Any], log_dir: Path, allow: bool = True) -> str | None:
    """Create or refresh the peer's venv; None when usable, else why not. A stamp of the
    requirements and base interpreter skips pip when nothing changed."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    shared = [f"{n}=={importlib.metadata.version(n)}" for n in SHARED_PACKAGES]
    reqs = [*spec["packages"], *shared]
    stamp_text = json.dumps({"python": base, "requirements": reqs})
    stamp = VENVS / peer / ".bench-stamp"
    python = venv_python(peer)
    if not (python.exists() and stamp.is_file() and stamp.read_text() == stamp_text):
        if not allow:
            return f"not installed in {VENVS / peer} (run without --no-install)"
        log = log_dir / f"install-{peer}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        print(f"  installing {peer} into {VENVS / peer}: {' '.join(reqs)} (log: {log})", flush=True)
        steps = [[str(python), "-m", "pip", "install", "--disable-pip-version-check", *reqs]]
        if not python.exists():
            steps.insert(0, [base, "-m", "venv", str(VENVS / peer)])
        with open(log, "w") as out:
            for argv in steps:
                done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=1800, check=False)
                if done.returncode != 0:
                    return f"`{' '.join(argv[:5])} ...` failed with code {done.returncode}; see {log}"
    done = subprocess.run([str(python), "-c", spec["check"]], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return f"`{spec['check']}` fails in {VENVS / peer}:\n{done.stderr.strip()[-1500:]}"
    stamp.write_text(stamp_text)
    return None


def model_specs(repository: Path, models: dict[str, str]) -> list[dict[str, Any]]:
    """The served models as the peers' wrapper reads them, from Shunter's own config.yaml."""
    specs = []
    for model, version in models.items():
        config = load_version_config(repository / model, version)
        if config.backend != "onnx":
            raise ValueError(f"{model} v{version} is {config.backend}; the peers serve ONNX files only")
        batching = config.dynamic_batching
        specs.append(
            {
                "name": model,
                "onnx": str((repository / model / version / config.artifact_name).resolve()),
                "handler": str((repository / model / config.handler).resolve()) if config.handler else None,
                "max_batch_size": config.max_batch_size,
                "max_queue_delay_us": batching.max_queue_delay_us if batching else 0,
                "preferred_batch_sizes": list(batching.preferred_batch_sizes) if batching else [],
                "inputs": [t.model_dump() for t in config.inputs],
                "outputs": [t.model_dump() for t in config.outputs],
                "intra_op_threads": config.intra_op_threads,
                "inter_op_threads": config.inter_op_threads,
            }
        )
    return specs


def launch_triton(name: str, specs: list[dict[str, Any]], instances: int, work: Path, log_dir: Path) -> Server:
    """PyTriton's bundled Triton with our ORT wrapper behind its Python backend."""
    spec_file = work / f"{name}-models.json"
    spec_file.write_text(json.dumps({"models": specs}, indent=1))
    python = venv_python("triton")
    ports = [str(free_port()) for _ in range(3)]
    argv = [str(python), str(PEERS_DIR / "triton_server.py"), "--spec", str(spec_file), "--instances", str(instances)]
    argv += ["--grpc-port", ports[0], "--http-port", ports[1], "--metrics-port", ports[2]]
    # Triton's Python stub links libpython from the base Python's LIBDIR: without it first on
    # LD_LIBRARY_PATH, model loading fails with an ``_thread.RLock`` error.
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    libdir = done.stdout.strip() or (sysconfig.get_config_var("LIBDIR") or "")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    env = {"LD_LIBRARY_PATH": f"{libdir}:{current}" if current else libdir}
    prefix = "peer triton listening on "

    def ready(text: str) -> dict[str, Any] | None:
        found = [line[len(prefix) :].strip() for line in text.splitlines() if line.startswith(prefix)]
        return {"address": found[0]} if found else None

    return launch(name, argv, log_dir, [s["name"] for s in specs], ready, env=env)


def launch_mlserver(name: str, specs: list[dict[str, Any]], workers: int, work: Path, log_dir: Path) -> Server:
    """MLServer with adaptive batching from the same config (max batch, max batch time)."""
    root = work / name
    root.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    settings = {"debug": False, "parallel_workers": workers, "host": "127.0.0.1", "grpc_port": grpc_port}
    settings |= {"http_port": free_port(), "metrics_port": free_port(), "metrics_dir": str(root / ".metrics")}
    (root / "settings.json").write_text(json.dumps({**settings, "load_models_at_startup": True}, indent=1))
    for spec in specs:
        (root / spec["name"]).mkdir(exist_ok=True)

        def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            # A leading -1 tells clients it is the batch dimension.
            return [{"name": t["name"], "datatype": t["datatype"], "shape": [-1, *t["shape"]]} for t in items]

        model_settings = {
            "name": spec["name"],
            "implementation": "mlserver_runtime.OrtRuntime",
            "max_batch_size": spec["max_batch_size"],
            "max_batch_time": spec["max_queue_delay_us"] / 1e6,
            "inputs": tensors(spec["inputs"]),
            "outputs": tensors(spec["outputs"]),
            "parameters": {"extra": spec},
        }
        (root / spec["name"] / "model-settings.json").write_text(json.dumps(model_settings, indent=1))
    address, argv = f"127.0.0.1:{grpc_port}", [str(venv_python("mlserver").parent / "mlserver"), "start", str(root)]

    # No line says every model is loaded: wait_ready's ModelReady check does that.
    def ready(text: str) -> dict[str, Any] | None:
        return {"address": address} if "gRPC server running" in text else None

    return launch(name, argv, log_dir, [s["name"] for s in specs], ready, env={"PYTHONPATH": str(PEERS_DIR)}, cwd=root)


def compare_outputs(specs: list[dict[str, Any]], reference: Server, others: list[Server]) -> dict[str, dict[str, str]]:
    """The same 4-row request to every system, outputs against Shunter's worker's: the same computation."""
    import numpy as np

    from services.bench.payload import InputPlan, build_request, make_inputs
    from services.jobs.infer import decode_response

    def ask(server: Server, request: Any) -> dict[str, Any]:
        with grpc.insecure_channel(server.address) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, timeout=30, metadata=tuple(server.info.get("grpc_metadata", ()))
            )
        return {name: array.astype(np.float64) for name, array in decode_response(reply).items()}

    verdicts: dict[str, dict[str, str]] = {server.name: {} for server in others}
    for spec in specs:
        plans = [InputPlan(t["name"], t["datatype"], (4, *t["shape"])) for t in spec["inputs"]]
        request = build_request(spec["name"], "", plans, make_inputs(plans, np.random.default_rng(7)))
        try:
            expected = ask(reference, request)
        except grpc.RpcError as exc:
            expected, why = None, f"no reference answer: {exc.code().name}"
        for server in others:
            try:
                got = ask(server, request) if expected is not None else None
            except grpc.RpcError as exc:
                verdicts[server.name][spec["name"]] = f"error {exc.code().name}: {exc.details()}"
                continue
            if got is None or expected is None:
                verdicts[server.name][spec["name"]] = why
            elif sorted(got) != sorted(expected) or any(got[k].shape != v.shape for k, v in expected.items()):
                verdicts[server.name][spec["name"]] = f"different outputs: {sorted(got)} vs {sorted(expected)}"
            else:
                worst = max(float(np.max(np.abs(got[k] - v))) for k, v in expected.items())
                word = "match" if worst <= 1e-4 else "DIFFER"
                verdicts[server.name][spec["name"]] = f"{word} (max abs diff {worst:.1e})"
    return verdicts
