"""The peers: NVIDIA Triton (PyPI nvidia-pytriton) and Seldon MLServer, installed and served.

Each peer gets its own virtual environment under .bench-venvs/ (git-ignored), made from
the same base Python as Shunter's .venv and installed with pip from the package index.
Both serve the very ONNX files Shunter serves, through one shared wrapper
(peers/ort_model.py: an ONNX Runtime session with the model config's thread counts, 1
intra-op and 1 inter-op thread for the examples, plus the model's own handler for
minilm), with the ONNX Runtime and tokenizers versions of Shunter's venv, and with
batching set from the same config.yaml: Triton's dynamic batcher
(max_queue_delay_microseconds, preferred_batch_size) and MLServer's adaptive batching
(max_batch_size, max_batch_time).

A peer that cannot be installed or started is reported, with the reason, instead of
stopping the report.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report_env import package_versions, venv_versions
from report_servers import ROOT, Server, launch

from services.common.model_config import load_version_config
from services.common.ready_line import free_port

logger = logging.getLogger("bench.report")

VENVS = ROOT / ".bench-venvs"
PEERS_DIR = Path(__file__).resolve().parent / "peers"
#: Same engine builds as Shunter's own environment, so the model code is identical.
SHARED_PACKAGES = ("onnxruntime", "tokenizers")


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]
    #: What must import in the venv for the peer to be usable.
    check: str
    #: Packages whose versions the report records.
    versions: tuple[str, ...]


PEERS: dict[str, Peer] = {
    "triton": Peer(
        name="triton",
        packages=("nvidia-pytriton==0.7.0",),
        check="import pytriton.triton, onnxruntime, tokenizers",
        versions=("nvidia-pytriton", "onnxruntime", "tokenizers", "numpy"),
    ),
    "mlserver": Peer(
        name="mlserver",
        # uvloop newer than 0.21 kills MLServer 1.7's parallel workers.
        packages=("mlserver==1.7.1", "uvloop==0.21.0"),
        check="import mlserver, onnxruntime, tokenizers",
        versions=("mlserver", "uvloop", "onnxruntime", "tokenizers", "numpy"),
    ),
}


def base_python() -> str:
    """The interpreter Shunter's venv was made from (Triton's stub needs its libpython)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def requirements(peer: Peer) -> list[str]:
    ours = package_versions(SHARED_PACKAGES)
    return [*peer.packages, *(f"{name}=={ours[name]}" for name in SHARED_PACKAGES if ours[name] != "not installed")]


def venv_python(peer: Peer) -> Path:
    return VENVS / peer.name / "bin" / "python"


def install(peer: Peer, log_dir: Path, allow_install: bool = True) -> str | None:
    """Create or refresh the peer's venv; returns None when usable, else the reason it is not.

    A stamp of the requirement list and base interpreter skips the work when nothing
    changed, so only the first report (or a changed pin) pays for the download.
    """
    reqs = requirements(peer)
    stamp_text = json.dumps({"python": base_python(), "requirements": reqs})
    stamp = VENVS / peer.name / ".bench-stamp"
    python = venv_python(peer)
    if python.exists() and stamp.is_file() and stamp.read_text() == stamp_text:
        return _check(peer)
    if not allow_install:
        return f"not installed in {VENVS / peer.name} (run without --no-install)"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"install-{peer.name}.log"
    print(f"  installing {peer.name} into {VENVS / peer.name}: {' '.join(reqs)} (log: {log})", flush=True)
    started = time.monotonic()
    with open(log, "w") as out:
        steps = [
            [base_python(), "-m", "venv", "--clear", str(VENVS / peer.name)],
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", *reqs],
        ]
        for argv in steps:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            try:
                done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=1800, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"install failed ({exc}); see {log}"
            if done.returncode != 0:
                return f"`{' '.join(argv[2:5])} ...` failed with code {done.returncode}:\n{_tail(log)}"
    problem = _check(peer)
    if problem is None:
        stamp.write_text(stamp_text)
        print(f"  installed {peer.name} in {time.monotonic() - started:.0f} s", flush=True)
    return problem


def _check(peer: Peer) -> str | None:
    try:
        done = subprocess.run(
            [str(venv_python(peer)), "-c", peer.check], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{venv_python(peer)} does not run: {exc}"
    if done.returncode != 0:
        return f"`{peer.check}` fails in {VENVS / peer.name}:\n{done.stderr.strip()[-1500:]}"
    return None


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join([line for line in text if not line.startswith("WARNING: Location")][-lines:])


def versions(peer: Peer) -> dict[str, str]:
    return venv_versions(venv_python(peer), peer.versions)


# ---------------------------------------------------------------- model specs


def model_specs(repository: Path, models: dict[str, str]) -> list[dict[str, Any]]:
    """The served models as the peers' wrapper reads them, from Shunter's own config.yaml.

    ``repository`` is the original model repository (examples/models); ``models`` maps
    each model to the version whose ONNX file is served (the same file Shunter serves).
    """
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


# ---------------------------------------------------------------- launching


def _line_ready(prefix: str) -> Any:
    def parse(text: str) -> dict[str, Any] | None:
        for line in text.splitlines():
            if line.startswith(prefix):
                return {"address": line[len(prefix) :].strip()}
        return None

    return parse


def triton_env() -> dict[str, str]:
    """LD_LIBRARY_PATH with the base Python's lib dir: Triton's Python stub links libpython
    from there, and without it model loading fails with an ``_thread.RLock`` error."""
    import os
    import sysconfig

    python = venv_python(PEERS["triton"])
    try:
        libdir = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": f"{libdir}:{current}" if current else libdir}


def launch_triton(name: str, specs: list[dict[str, Any]], instances: int, work: Path, log_dir: Path) -> Server:
    spec_file = work / f"{name}-models.json"
    spec_file.write_text(json.dumps({"models": specs}, indent=1))
    argv = [
        str(venv_python(PEERS["triton"])),
        str(PEERS_DIR / "triton_server.py"),
        "--spec",
        str(spec_file),
        "--instances",
        str(instances),
        "--grpc-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
    ]
    return launch(
        name,
        argv,
        log_dir=log_dir,
        models=[s["name"] for s in specs],
        parse_ready=_line_ready("peer triton listening on "),
        env=triton_env(),
    )


def _metadata_tensors(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # MLServer reports shapes as given; a leading -1 tells clients it is the batch dimension.
    return [{"name": t["name"], "datatype": t["datatype"], "shape": [-1, *t["shape"]]} for t in tensors]


def launch_mlserver(name: str, specs: list[dict[str, Any]], parallel_workers: int, work: Path, log_dir: Path) -> Server:
    root = work / name
    root.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    settings = {
        "debug": False,
        "parallel_workers": parallel_workers,
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(root / ".metrics"),
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=1))
    for spec in specs:
        model_dir = root / spec["name"]
        model_dir.mkdir(exist_ok=True)
        model_settings = {
            "name": spec["name"],
            "implementation": "mlserver_runtime.OrtRuntime",
            "max_batch_size": spec["max_batch_size"],
            "max_batch_time": spec["max_queue_delay_us"] / 1e6,
            "inputs": _metadata_tensors(spec["inputs"]),
            "outputs": _metadata_tensors(spec["outputs"]),
            "parameters": {"extra": spec},
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=1))
    mlserver = venv_python(PEERS["mlserver"]).parent / "mlserver"
    address = f"127.0.0.1:{grpc_port}"
    return launch(
        name,
        [str(mlserver), "start", str(root)],
        log_dir=log_dir,
        models=[s["name"] for s in specs],
        # MLServer prints no line that says every model is loaded: wait_ready's gRPC
        # ModelReady check does that once the gRPC server is up.
        parse_ready=lambda text: {"address": address} if "gRPC server running" in text else None,
        env={"PYTHONPATH": str(PEERS_DIR)},
        cwd=root,
    )


# ---------------------------------------------------------------- same answers


def _request(spec: dict[str, Any], rows: int) -> Any:
    import numpy as np

    from services.bench.payload import InputPlan, build_request, make_inputs

    plans = [InputPlan(t["name"], t["datatype"], (rows, *t["shape"])) for t in spec["inputs"]]
    return build_request(spec["name"], "", plans, make_inputs(plans, np.random.default_rng(7)))


def _outputs(reply: Any) -> dict[str, Any]:
    import numpy as np

    from services.common.datatypes import NUMPY_DTYPES

    out = {}
    for index, tensor in enumerate(reply.outputs):
        dtype = NUMPY_DTYPES[tensor.datatype]
        if index < len(reply.raw_output_contents):
            array = np.frombuffer(reply.raw_output_contents[index], dtype=dtype)
        else:  # typed contents (FP32 is all the examples return)
            array = np.asarray(tensor.contents.fp32_contents, dtype=dtype)
        out[tensor.name] = array.reshape(tuple(tensor.shape))
    return out


def compare_outputs(
    specs: list[dict[str, Any]], reference: Server, others: list[Server], rows: int = 4
) -> dict[str, dict[str, str]]:
    """Send each system the same request and compare its outputs with Shunter's worker's.

    Proves the comparison is of the same computation: same graph, same handler, same
    answers (to float tolerance). Returns {server name: {model: "match (max abs diff ...)" or why not}}.
    """
    import grpc
    import numpy as np

    from services.gen.inference import grpc_service_pb2_grpc as pb_grpc

    def ask(server: Server, request: Any) -> dict[str, Any]:
        metadata = tuple(server.info.get("grpc_metadata", ()))
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return _outputs(stub.ModelInfer(request, timeout=30, metadata=metadata))

    verdicts: dict[str, dict[str, str]] = {server.name: {} for server in others}
    for spec in specs:
        request = _request(spec, rows)
        try:
            expected = ask(reference, request)
        except grpc.RpcError as exc:
            for server in others:
                verdicts[server.name][spec["name"]] = f"no reference answer: {exc.code().name}"
            continue
        for server in others:
            try:
                got = ask(server, request)
            except grpc.RpcError as exc:
                verdicts[server.name][spec["name"]] = f"error {exc.code().name}: {exc.details()}"
                continue
            diffs = []
            for name, want in expected.items():
                have = got.get(name)
                if have is None or have.shape != want.shape:
                    diffs.append(None)
                else:
                    diffs.append(float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))))
            if None in diffs:
                verdicts[server.name][spec["name"]] = f"different outputs: {sorted(got)} vs {sorted(expected)}"
            else:
                worst = max(diffs)
                word = "match" if worst <= 1e-4 else "DIFFER"
                verdicts[server.name][spec["name"]] = f"{word} (max abs diff {worst:.1e})"
    return verdicts
