"""``shunter batch``: run a model over a file, in order, resumable (services/jobs/batch.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from services.cli import tls_args

EPILOG = """\
The input is streamed (parquet by record batches, jsonl by lines, csv in blocks, npy
memory-mapped). Columns map to the model's inputs by name: a column X holds input X's
whole tensor per row (a list, or a scalar for one element), or columns X.0 … X.{K-1} hold
its elements; text columns feed BYTES inputs. OUTPUT is a directory of chunk files and a
manifest; bad rows go to OUTPUT.errors.jsonl and the job goes on.

exit codes: 0 done · 1 the server or target failed the job · 2 bad input, output or
flags · 3 more bad rows than --max-errors. A killed or failed job keeps what it
committed: run the same command with --resume to finish it.

examples:
  shunter batch digits --input rows.parquet --output out/ --target $SHUNTER_ROUTER
  shunter batch digits --input rows.npy --output out/ --resume --shard 0/4 --json
"""

#: Exit codes, documented in the epilog above.
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TOO_MANY_ERRORS = 1, 2, 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="run a model over a file (parquet/jsonl/csv/npy), in order, resumable",
        description="Run a model over a whole file through a router or worker; output in input order.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="model name")
    parser.add_argument("--input", required=True, type=Path, metavar="PATH", help="input file")
    parser.add_argument("--output", required=True, type=Path, metavar="PATH", help="output directory")
    parser.add_argument("--target", default=None, metavar="HOST:PORT",
                        help="router or worker address (default $SHUNTER_ROUTER)")
    parser.add_argument("--api-key", default=None, metavar="K", help="API key (default $SHUNTER_API_KEY)")
    tls_args.add_dial_args(parser, "the target")
    parser.add_argument("--version", default="", metavar="V", help="model version (default: the traffic split)")
    parser.add_argument("--input-format", choices=("parquet", "jsonl", "npy", "csv"), default=None,
                        help="default: from the extension")
    parser.add_argument("--output-format", choices=("parquet", "jsonl", "npy"), default=None,
                        help="default: from the output's extension, else parquet")
    parser.add_argument("--rows-per-request", type=int, default=64, metavar="N", help="rows per call (default 64)")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N", help="calls in flight (default 8)")
    parser.add_argument("--resume", action="store_true", help="continue the job that wrote OUTPUT")
    parser.add_argument("--shard", default="0/1", metavar="I/N", help="process shard I of N (chunk k → shard k %% N)")
    parser.add_argument("--max-errors", type=int, default=None, metavar="N",
                        help="stop (exit 3) once more than N rows are bad (default: never)")
    parser.add_argument("--chunk-rows", type=int, default=8192, metavar="N",
                        help="input rows per committed output chunk (default 8192)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per-call deadline (default 60)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="how long to wait for the target at start (default 10)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object, no progress bar")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _fail(code: int, message: str) -> int:
    print(f"shunter batch: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from services.jobs.batch import BatchOptions, Progress, TooManyErrors, parse_shard, run_batch
    from services.jobs.infer import JobFailed
    from services.jobs.output import OutputError, errors_path
    from services.jobs.readers import InputError

    target = args.target or os.environ.get("SHUNTER_ROUTER")
    if not target:
        return _fail(EXIT_BAD_INPUT, "no --target and no $SHUNTER_ROUTER: say where the router or worker is")
    try:
        tls = tls_args.client_tls(args)
    except tls_args.FlagError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    for flag, value in (("--rows-per-request", args.rows_per_request), ("--concurrency", args.concurrency),
                        ("--chunk-rows", args.chunk_rows)):
        if value < 1:
            return _fail(EXIT_BAD_INPUT, f"{flag} must be >= 1, got {value}")
    if args.max_errors is not None and args.max_errors < 0:
        return _fail(EXIT_BAD_INPUT, f"--max-errors must be >= 0, got {args.max_errors}")
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    opts = BatchOptions(
        model=args.model, input=args.input, output=args.output, target=target,
        api_key=args.api_key or os.environ.get("SHUNTER_API_KEY"), version=args.version, tls=tls,
        input_format=args.input_format, output_format=args.output_format,
        rows_per_request=args.rows_per_request, concurrency=args.concurrency, resume=args.resume,
        shard=shard, max_errors=args.max_errors, chunk_rows=args.chunk_rows, timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout,
    )
    show_progress = not (args.json or args.no_progress)
    progress = Progress()
    try:
        summary = _run_with_progress(opts, progress, show_progress, run_batch)
    except (InputError, OutputError) as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    except JobFailed as exc:
        return _fail(EXIT_FAILED, f"{exc}; committed chunks are kept, --resume continues")
    except TooManyErrors as exc:
        return _fail(EXIT_TOO_MANY_ERRORS, f"{exc}; output is incomplete")
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, errors_path(opts.output))
    return 0


def _run_with_progress(opts, progress, show: bool, run_batch):
    if not show:
        return asyncio.run(run_batch(opts, progress))
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"), TextColumn("[red]{task.fields[errors]} errors"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(opts.model, total=None, rate="-", errors=0)

        def update(p) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=p.done, total=p.total, errors=p.errors,
                       rate=f"{speed:,.0f}" if speed else "-")

        summary = asyncio.run(run_batch(opts, progress, update))
        update(progress)
        return summary


def _print_summary(summary: dict, errors_file: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"shunter batch {summary['model']}", show_header=False)
    for label, key in (("rows", "rows"), ("written", "written"), ("errors", "errors"),
                       ("resumed from", "resumed_rows"), ("seconds", "seconds"), ("rows/s", "rows_per_s"),
                       ("retries", "retries"), ("rate-limit waits", "rate_limited_waits"),
                       ("output", "output")):
        table.add_row(label, str(summary[key]))
    if summary["errors"]:
        table.add_row("errors file", str(errors_file))
    Console().print(table)
