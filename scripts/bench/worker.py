#!/usr/bin/env python
"""Worker benchmark (issue 2, "Speed"): the engine in-process against the served worker.

For each model (default: digits and minilm from examples/models):

(a) in-process: the engine exactly as the worker builds it (create_engine, with the
    model's handler when it has one), rows/s at batch 1, 2, 4, ... up to max_batch_size;
(b) served: a worker subprocess on port 0, loaded with a temporary copy of the model
    with `dynamic_batching` removed (off) or kept (on); `shunter bench` closed loop with
    single-row requests at concurrency 1, 16 and 64: rows/s, p50, p99;
(c) serving overhead: batching off, requests of B rows at concurrency 4 (the engine is
    never idle), for B = 1 and the best in-process batch size.

Then the two ratios issue 2 names:

    served/in-process at batch B = served rows/s (c) / in-process rows/s at B
    batching gain captured      = (served on, c64 / served off, c1)
                                  / (best in-process rows/s / in-process batch-1 rows/s)

A table goes to stdout; JSON and a PNG plot go to bench-results/ (git-ignored).

    .venv/bin/python scripts/bench/worker.py                 # both models, ~3 min on 2 cores
    .venv/bin/python scripts/bench/worker.py --quick         # smoke run, ~1 min
    .venv/bin/python scripts/bench/worker.py --models minilm --duration 10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from report_engine import measure as measure_engine  # noqa: E402 - shared with the report

from services.bench import BenchOptions, run_bench  # noqa: E402
from services.common.model_config import version_config_text  # noqa: E402
from services.common.ready_line import parse_ready_line  # noqa: E402
from services.worker.repository import scan_repository  # noqa: E402

logger = logging.getLogger("bench.worker")

CONCURRENCIES = (1, 16, 64)
#: Enough outstanding requests that a non-batching worker's engine never waits.
OVERHEAD_CONCURRENCY = 4


def pick_version(repository: Path, model: str, version: str | None) -> tuple[str, Path]:
    """The version to measure: the one asked for, else the highest (what a request with no
    version gets from the worker)."""
    versions = {v.version: v.version_dir for v in scan_repository(repository, only={model})}
    chosen = version or max(versions, key=int)
    if chosen not in versions:
        raise SystemExit(f"{model}: no version {chosen} (have {', '.join(sorted(versions, key=int))})")
    return chosen, versions[chosen]


# ---------------------------------------------------------------- in-process


def in_process(model: str, version: str, version_dir: Path, seconds: float) -> dict[int, float]:
    """rows/s of the engine (handler included) at each batch size, on this thread."""
    results = measure_engine(version_dir.parent.parent, model, version, seconds)["rows_per_s"]
    for batch, rate in results.items():
        print(f"  in-process {model} v{version} batch {batch:>3}: {rate:9.1f} rows/s", flush=True)
    return results


# ---------------------------------------------------------------- served


def make_repository(root: Path, source: Path, model: str, version: str, batching: bool) -> Path:
    """A one-model, one-version repository whose config has batching on or off.

    The version's merged config becomes the model-level config.yaml; big files are
    hard-linked where the file system allows, else copied.
    """
    repo = root / ("on" if batching else "off")
    model_src = source / model
    model_dst = repo / model
    model_dst.mkdir(parents=True)
    text, _ = version_config_text(model_src, version)
    config = yaml.safe_load(text)
    if batching:
        config.setdefault("dynamic_batching", {"max_queue_delay_us": 2000})
    else:
        config.pop("dynamic_batching", None)
    (model_dst / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for entry in model_src.iterdir():
        if entry.name == "config.yaml" or (entry.is_dir() and entry.name.isdigit() and entry.name != version):
            continue
        target = model_dst / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("config.yaml"))
        else:
            _link_or_copy(entry, target)
    return repo


def _link_or_copy(src: os.PathLike | str, dst: os.PathLike | str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def worker_process(repo: Path, log_path: Path) -> Iterator[str]:
    """Start `shunter worker` on port 0; yield HOST:PORT once it prints its ready line."""
    cmd = [
        sys.executable,
        "-m",
        "services.cli.main",
        "worker",
        "--model-repository",
        str(repo),
        "--port",
        "0",
        "--metrics-port",
        "0",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            assert proc.stdout is not None
            address = None
            deadline = time.monotonic() + 300
            for line in proc.stdout:
                announced = parse_ready_line(line)
                if announced and announced.service == "worker":
                    address = announced.address
                    break
                if time.monotonic() > deadline:
                    break
            if address is None:
                proc.kill()
                proc.wait()
                raise SystemExit(f"worker did not become ready; see {log_path}:\n{log_path.read_text()[-3000:]}")
            # Keep draining stdout so the worker never blocks on a full pipe.
            threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
            yield address
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def served_point(
    address: str, model: str, version: str, concurrency: int, batch_rows: int, args: argparse.Namespace
) -> dict[str, Any]:
    report = run_bench(
        BenchOptions(
            target=address,
            model=model,
            model_version=version,
            concurrency=concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            processes=args.client_processes,
            batch_rows=batch_rows,
            timeout_s=30.0,
        )
    )
    bad = {code: n for code, n in report["codes"].items() if code != "OK"}
    point = {
        "concurrency": concurrency,
        "batch_rows": batch_rows,
        "rows_per_s": report["rows_per_s"],
        "p50_ms": report["latency_ms"]["p50"],
        "p99_ms": report["latency_ms"]["p99"],
        "requests": report["requests"],
        "errors": bad,
    }
    print(
        f"  served c={concurrency:<3} rows/req={batch_rows:<3} {point['rows_per_s']:9.1f} rows/s  "
        f"p50 {_ms(point['p50_ms'])}  p99 {_ms(point['p99_ms'])}" + (f"  errors {bad}" if bad else ""),
        flush=True,
    )
    return point


def _ms(value: float | None) -> str:
    return "    -   " if value is None else f"{value:7.2f} ms"


def bench_model(model: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    version, version_dir = pick_version(args.model_repository, model, args.version.get(model))
    print(f"\n== {model} (version {version}) ==", flush=True)
    inproc = in_process(model, version, version_dir, args.inproc_seconds)
    best_batch = max(inproc, key=inproc.get)
    overhead_batches = sorted({1, best_batch}) if not args.quick else [best_batch]
    served: dict[str, list[dict[str, Any]]] = {}
    overhead: list[dict[str, Any]] = []
    for batching in (False, True):
        mode = "on" if batching else "off"
        repo = make_repository(scratch / model, args.model_repository, model, version, batching)
        print(f"  worker with batching {mode}", flush=True)
        with worker_process(repo, scratch / f"{model}-{mode}.log") as address:
            served[mode] = [served_point(address, model, version, c, 1, args) for c in CONCURRENCIES]
            if not batching:
                overhead = [
                    served_point(address, model, version, OVERHEAD_CONCURRENCY, b, args) for b in overhead_batches
                ]
    for point in overhead:
        point["in_process_rows_per_s"] = inproc[point["batch_rows"]]
        point["ratio"] = point["rows_per_s"] / inproc[point["batch_rows"]]
    on_c64 = next(p for p in served["on"] if p["concurrency"] == 64)["rows_per_s"]
    off_c1 = next(p for p in served["off"] if p["concurrency"] == 1)["rows_per_s"]
    engine_gain = inproc[best_batch] / inproc[1]
    served_gain = on_c64 / off_c1 if off_c1 else float("nan")
    return {
        "model": model,
        "version": version,
        "in_process_rows_per_s": inproc,
        "best_batch": best_batch,
        "served": served,
        "overhead": overhead,
        "engine_gain": engine_gain,
        "served_gain": served_gain,
        "batching_gain_captured": served_gain / engine_gain,
    }


# ---------------------------------------------------------------- report


def print_report(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n{r['model']} v{r['version']}")
        print(
            "  in-process  " + "  ".join(f"b{b}: {v:.0f}" for b, v in r["in_process_rows_per_s"].items()) + "  rows/s"
        )
        print(f"  {'batching':<9}{'conc':>5}{'rows/s':>11}{'p50 ms':>10}{'p99 ms':>10}")
        for mode in ("off", "on"):
            for p in r["served"][mode]:
                print(
                    f"  {mode:<9}{p['concurrency']:>5}{p['rows_per_s']:>11.1f}"
                    f"{_num(p['p50_ms']):>10}{_num(p['p99_ms']):>10}"
                )
        for p in r["overhead"]:
            print(
                f"  served/in-process at batch {p['batch_rows']:<3} = {p['rows_per_s']:.1f} / "
                f"{p['in_process_rows_per_s']:.1f} = {p['ratio']:.3f}   (batching off, concurrency "
                f"{OVERHEAD_CONCURRENCY})"
            )
        print(
            f"  batching gain captured = ({r['served_gain']:.2f}x served: on c64 / off c1) / "
            f"({r['engine_gain']:.2f}x engine: batch {r['best_batch']} / batch 1) = "
            f"{r['batching_gain_captured']:.3f}"
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # only the script needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
    for row, r in zip(axes, results, strict=True):
        left, right = row
        sizes = list(r["in_process_rows_per_s"])
        left.plot(sizes, [r["in_process_rows_per_s"][b] for b in sizes], marker="o", label="in-process")
        for p in r["overhead"]:
            left.scatter(
                [p["batch_rows"]],
                [p["rows_per_s"]],
                marker="x",
                color="red",
                zorder=3,
                label=f"served, {p['batch_rows']} rows/request",
            )
        left.set_xscale("log", base=2)
        left.set_yscale("log")
        left.set_xlabel("batch size (rows)")
        left.set_ylabel("rows/s")
        left.set_title(f"{r['model']} v{r['version']}: engine in-process")
        left.legend(fontsize=8)
        for mode, marker in (("off", "s"), ("on", "o")):
            points = r["served"][mode]
            right.plot(
                [p["concurrency"] for p in points],
                [p["rows_per_s"] for p in points],
                marker=marker,
                label=f"batching {mode}",
            )
        right.axhline(r["in_process_rows_per_s"][1], linestyle=":", color="gray", label="in-process batch 1")
        right.axhline(
            r["in_process_rows_per_s"][r["best_batch"]],
            linestyle="--",
            color="gray",
            label=f"in-process batch {r['best_batch']}",
        )
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.set_xlabel("concurrency (1-row requests)")
        right.set_ylabel("rows/s")
        right.set_title(f"served; batching gain captured {r['batching_gain_captured']:.2f}")
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,minilm", help="comma-separated (default digits,minilm)")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "examples" / "models")
    parser.add_argument(
        "--version",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="version to measure (default: the highest); repeatable",
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per served point (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: short points, fewer of them")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=None,
        help="shunter bench processes (default: a quarter of the CPUs, at least 1)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.version = dict(item.split("=", 1) for item in args.version)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = 0.5 if args.quick else 1.0
    args.inproc_seconds = 0.3 if args.quick else 1.5
    # The client shares the machine with the worker: on a small box one client process
    # leaves the cores to the server (the client sends identical pre-built bytes).
    args.client_processes = args.client_processes or max(1, (os.cpu_count() or 1) // 4)
    if not args.model_repository.is_dir():
        print(f"no model repository at {args.model_repository}; run scripts/build_examples.py first")
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(
        f"worker benchmark: {', '.join(models)}; {args.duration:g} s per served point, "
        f"{args.client_processes} client process(es), {os.cpu_count()} CPUs",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shunter-bench-") as tmp:
        results = [bench_model(model, args, Path(tmp)) for model in models]
    print_report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"worker-{stamp}.json"
    json_path.write_text(
        json.dumps(
            {"cpus": os.cpu_count(), "duration_s": args.duration, "quick": args.quick, "results": results},
            indent=2,
            default=str,
        )
    )
    png_path = args.out / f"worker-{stamp}.png"
    plot(results, png_path)
    print(
        f"\nsaved {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path} and "
        f"{png_path.name}; took {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
