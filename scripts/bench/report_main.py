"""The performance report (issue 5): Shunter measured, and measured against Triton and MLServer.

Run it through ``scripts/bench/report`` (which sets up .venv and the example models
first). Sections, each figure the median of ``--runs`` interleaved runs with min–max:

1. engine: each example model's engine in-process, rows/s at batch 1 … max (the limit);
2. worker: batching off vs on, closed loop at concurrency 1/16/64; a request of the
   engine's best batch size (batching off, concurrency 4) against the in-process limit;
   open loop (Poisson) at 50 % and 90 % of the measured capacity;
3. router: the hop over calling the worker directly (p50/p99 at concurrency 1 and 64),
   and a cache hit;
4. scaling: 1 vs 2 workers behind one router;
5. peers: Triton (dynamic batching, 1 and 2 instances) and MLServer (adaptive batching,
   parallel_workers 0 and 1) next to the Shunter worker and router, same ONNX files,
   same thread settings, same load generator, interleaved.

Every system serves the ONNX versions of the examples (digits v2, minilm v1), so all of
them run the same file through the same ONNX Runtime build with one intra-op thread.
Writes BENCHMARKS.md (keeping its History section), PNG plots and results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from report_env import busy_warning, machine  # noqa: E402
from report_measure import Settings  # noqa: E402
from report_phases import PHASES, SECTIONS, SERVED, Context  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench/report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 run, short points, fewer of them; writes under bench-results/report-quick/",
    )
    parser.add_argument("--runs", type=int, help="interleaved runs per figure (default 3; 1 with --quick)")
    parser.add_argument("--duration", type=float, help="measured seconds per point (default 4; 1.5 with --quick)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point (default 1; 0.3 with --quick)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=None,
        help="load generator processes (default: a quarter of the CPUs, at least 1)",
    )
    parser.add_argument("--no-install", action="store_true", help="use the peers' venvs as they are; never pip")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "examples" / "models")
    parser.add_argument("--output", type=Path, help="the markdown file (default BENCHMARKS.md)")
    parser.add_argument("--plots-dir", type=Path, help="PNGs and results.json (default docs/benchmarks/)")
    parser.add_argument(
        "--render", type=Path, metavar="RESULTS_JSON", help="measure nothing: rewrite the outputs from a results.json"
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    quick_dir = ROOT / "bench-results" / "report-quick"
    args.output = args.output or (quick_dir / "BENCHMARKS.md" if args.quick else ROOT / "BENCHMARKS.md")
    args.plots_dir = args.plots_dir or (quick_dir if args.quick else ROOT / "docs" / "benchmarks")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.render:
        from report_render import write_outputs

        paths = write_outputs(json.loads(args.render.read_text()), args.output, args.plots_dir, ROOT)
        print(f"wrote {', '.join(_rel(p) for p in paths)}")
        return 0
    if not all((args.model_repository / m / v).is_dir() for m, v in SERVED.items()):
        print(f"no example models in {args.model_repository}; run .venv/bin/python scripts/build_examples.py")
        return 2
    settings = Settings(
        runs=args.runs or (1 if args.quick else 3),
        duration_s=args.duration or (1.5 if args.quick else 4.0),
        warmup_s=args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0),
        # The client shares the machine with the servers: on a small box one client process
        # (it sends pre-serialized bytes) leaves the cores to the server under test.
        client_processes=args.client_processes or max(1, (os.cpu_count() or 1) // 4),
    )
    sections = [s for s in SECTIONS if s in args.sections.split(",")]
    started_wall, started = time.time(), time.monotonic()
    results: dict[str, Any] = {
        "meta": machine(ROOT),
        "settings": {**settings.__dict__, "quick": args.quick, "sections": sections, "served_versions": SERVED},
        "engine": {},
        "points": {},
        "capacity": {},
        "peers": {},
        "servers": {},
        "errors": {},
    }
    results["meta"]["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started_wall))
    warning = busy_warning(results["meta"]["load_at_start"])
    print(
        f"report: sections {', '.join(sections)}; {settings.runs} run(s) of {settings.duration_s:g} s per point "
        f"(+{settings.warmup_s:g} s warm-up), {settings.client_processes} client process(es), "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    if warning:
        print(f"  note: {warning}", flush=True)
    scratch_root = ROOT / "bench-results"
    logs = scratch_root / "report-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="report-", dir=scratch_root))
    try:
        ctx = Context(args, settings, work, logs, results)
        for section in sections:
            print(f"\n== {section} ==", flush=True)
            section_started = time.monotonic()
            try:
                PHASES[section](ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                results["errors"][section] = f"{type(exc).__name__}: {exc}"
                print(f"  section {section} failed: {exc}\n{traceback.format_exc()}", flush=True)
            print(f"  ({section}: {time.monotonic() - section_started:.0f} s)", flush=True)
    finally:
        results["meta"]["load_at_end"] = list(os.getloadavg())
        results["meta"]["took_s"] = round(time.monotonic() - started)
        shutil.rmtree(work, ignore_errors=True)
    from report_render import write_outputs

    paths = write_outputs(results, args.output, args.plots_dir, ROOT)
    print(
        f"\nwrote {', '.join(_rel(p) for p in paths)}; logs in {_rel(logs)}; took {results['meta']['took_s']} s",
        flush=True,
    )
    return 0


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())
