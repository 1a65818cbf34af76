"""``shunter bench``: load-test a model served over the Open Inference Protocol (like ghz)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

EPILOG = """\
Closed loop (default): --concurrency callers in total, each sending its next request as
soon as the last one returns. Open loop (--rate R): Poisson arrivals at R req/s in total,
each sent on schedule whether or not earlier calls have returned; latency counts from the
scheduled time, so queueing on the server is not hidden. By default every call sends the
same request, built once from the model's metadata (random values; BYTES inputs get short
sentences); --random-inputs builds a fresh one per call, --input cuts them from a file,
--vary-header gives a header a fresh value per call (with --users N: one stable value
per simulated user, the calls made for the N users in turn, and the report says which
versions answered each user). Latency percentiles are over calls
that returned OK; throughput counts every call, rows/s counts rows that came back OK.
--stream sends every call as a message on one ModelStreamInfer stream per connection
(as tritonclient's start_stream does) instead of a ModelInfer call each; statuses are
counted per message.

examples:
  shunter bench --target 127.0.0.1:8001 --model digits --concurrency 64 --duration 10
  shunter bench --target 127.0.0.1:8001 --model minilm --rate 200 --duration 30 --json
  shunter bench --target router:8001 --model digits --stream --concurrency 64 --connections 2
  SHUNTER_API_KEY=shk_... shunter bench --target router:8001 --cacert ca.pem --model digits \
      --random-inputs --vary-header x-user-id -H x-request-source=bench
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="load-test a model over gRPC (closed or open loop), like ghz",
        description="Load-test a model served over the Open Inference Protocol (KServe v2 gRPC).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="worker or router address")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--model-version", default="", metavar="V", help="version (default: the server's choice)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        metavar="N",
        help="closed loop: concurrent callers in total (default 16)",
    )
    parser.add_argument("--duration", type=float, default=10.0, metavar="S", help="measured seconds (default 10)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="open loop: Poisson arrivals per second in total (ignores --concurrency)",
    )
    parser.add_argument("--api-key", default=None, metavar="K",
                        help="sent as 'authorization: Bearer K' (default $SHUNTER_API_KEY; on the command "
                        "line it shows in `ps`: prefer the variable or --api-key-file)")
    parser.add_argument("--api-key-file", type=Path, default=None, metavar="F", help="read the API key from F")
    parser.add_argument("--tls", action="store_true", help="connect over TLS (system roots unless --cacert)")
    parser.add_argument("--cacert", default=None, metavar="PEM",
                        help="trust these CA certificates (implies --tls; default $SHUNTER_TLS_CA, "
                        "which `shunter up --tls` exports)")
    parser.add_argument("-H", "--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="extra gRPC metadata on every call (repeatable), e.g. -H x-tenant=a")
    parser.add_argument("--vary-header", default="", metavar="NAME",
                        help="give metadata NAME a fresh value on every call (a new user per call for sticky splits)")
    parser.add_argument("--users", type=int, default=0, metavar="N",
                        help="with --vary-header: N simulated users, each keeping one value of NAME for the "
                        "whole run (calls made for them in turn); reports the versions each user got")
    parser.add_argument("--input", default=None, metavar="FILE.npz",
                        help="cut requests from this file's rows (one array per input name), the next each call")
    parser.add_argument("--random-inputs", action="store_true",
                        help="fresh random inputs on every call (costs client CPU), e.g. to get past the cache")
    parser.add_argument("--stream", action="store_true",
                        help="send calls as messages on one ModelStreamInfer stream per connection")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="P",
        help="client processes (default min(4, CPU count)); load is spread evenly",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        metavar="N",
        help="connections in total, spread over the processes (default one per process); "
        "a server whose processes share a port (SO_REUSEPORT) needs several to use them all",
    )
    parser.add_argument("--batch-rows", type=int, default=1, metavar="B", help="rows per request (default 1)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds of load before measuring starts (default 0.5)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per-call deadline (default 10)")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=1024,
        metavar="N",
        help="open loop: cap on outstanding calls over all processes (default 1024)",
    )
    parser.add_argument(
        "--dim-length",
        type=int,
        default=16,
        metavar="L",
        help="length given to variable (-1) input dimensions (default 16)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs and arrivals (default 0)")
    parser.set_defaults(func=run)


def _json_safe(value):
    """NaN and infinities are not JSON; report them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def run(args: argparse.Namespace) -> int:
    from services.bench import BenchError, BenchOptions, format_table, run_bench  # heavy: keep --help fast
    from services.bench.requests import RequestError, parse_metadata

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    api_key = args.api_key or os.environ.get("SHUNTER_API_KEY") or None
    if args.api_key_file is not None:
        try:
            api_key = args.api_key_file.read_text().strip()
        except OSError as exc:
            print(f"shunter bench: --api-key-file {args.api_key_file}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        headers = parse_metadata(args.metadata)
    except RequestError as exc:
        print(f"shunter bench: {exc}", file=sys.stderr)
        return 2
    options = BenchOptions(
        target=args.target,
        model=args.model,
        model_version=args.model_version,
        concurrency=args.concurrency,
        duration_s=args.duration,
        rate=args.rate,
        api_key=api_key,
        tls=args.tls,
        cacert=args.cacert or os.environ.get("SHUNTER_TLS_CA") or None,
        headers=headers,
        vary_header=args.vary_header.strip().lower(),
        users=args.users,
        input_file=args.input,
        random_inputs=args.random_inputs,
        stream=args.stream,
        processes=args.processes,
        connections=args.connections,
        batch_rows=args.batch_rows,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        max_inflight=args.max_inflight,
        dim_length=args.dim_length,
        seed=args.seed,
    )
    try:
        report = run_bench(options)
    except BenchError as exc:
        print(f"shunter bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_json_safe(report)))
    else:
        print(format_table({**report, "header": _header(report)}))
    return 0


def _header(report: dict) -> str:
    version = report["model_version"] or "(server default)"
    if report["mode"] == "closed":
        load = f"closed loop, concurrency {report['concurrency']}"
    else:
        load = f"open loop, {report['rate']:g} req/s Poisson"
    inputs = ", ".join(f"{name} {shape}" for name, shape in report["inputs"].items())
    if report.get("stream"):
        load += ", one ModelStreamInfer stream per connection"
    return (
        f"shunter bench → {report['target']}  model {report['model']} version {version}\n"
        f"{load} over {report['processes']} process(es) and {report['connections']} connection(s), "
        f"warm-up {report['warmup_s']:g} s\n"
        f"request: {inputs} ({report['requests_from']})"
    )
