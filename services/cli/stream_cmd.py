"""``shunter stream``: serve a model from a Redis Stream with a consumer group (services/jobs/stream.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

from services.cli import tls_args

EPILOG = """\
Each input entry is one row: a field `inputs` holding JSON (input name → value), or raw
tensors (`X:data`, `X:datatype`, `X:shape` per input X). Each result goes to the output
stream with the input entry's `id`, written at most once (a dedupe key, in one Lua step
with the XACK). Poison entries go to the dead-letter stream (default IN:dlq) with a
reason. Consumers of one group share the work; each needs its own --consumer name.

exit codes: 0 stopped by SIGTERM/SIGINT after finishing its batch · 1 the model or
target failed · 2 bad flags, Redis URL, streams or group.

example:
  shunter stream digits --redis-url redis://127.0.0.1:6379/0 --input-stream digits:in \\
      --output-stream digits:out --group digits --target $SHUNTER_ROUTER
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stream",
        help="serve a model from a Redis Stream (consumer group, at-least-once, one result per event)",
        description="Event-driven serving: read a Redis Stream in a consumer group, infer, write results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="model name")
    parser.add_argument("--redis-url", required=True, metavar="URL",
                        help="redis://[USER:PASSWORD@]HOST:PORT/DB, rediss://, redis+sentinel://S:P,.../MASTER, "
                        "redis+cluster://N:P,... (on a cluster the streams share one {hash tag})")
    parser.add_argument("--input-stream", required=True, metavar="IN", help="stream to consume")
    parser.add_argument("--output-stream", required=True, metavar="OUT", help="stream results are added to")
    parser.add_argument("--group", required=True, metavar="G", help="consumer group (created at 0 when missing)")
    parser.add_argument("--consumer", default=None, metavar="NAME", help="consumer name (default: the host name)")
    parser.add_argument("--target", default=None, metavar="HOST:PORT",
                        help="router or worker address (default $SHUNTER_ROUTER)")
    parser.add_argument("--api-key", default=None, metavar="K", help="API key (default $SHUNTER_API_KEY)")
    tls_args.add_dial_args(parser, "the target")
    parser.add_argument("--version", default="", metavar="V", help="model version (default: the traffic split)")
    parser.add_argument("--batch", type=int, default=64, metavar="N", help="entries per read (default 64)")
    parser.add_argument("--block-ms", type=int, default=100, metavar="MS", help="XREADGROUP BLOCK (default 100)")
    parser.add_argument("--dead-letter-stream", default=None, metavar="DLQ", help="poison entries (default IN:dlq)")
    parser.add_argument("--max-deliveries", type=int, default=5, metavar="N",
                        help="dead-letter an entry delivered more often (default 5)")
    parser.add_argument("--claim-idle-ms", type=int, default=30000, metavar="MS",
                        help="claim other consumers' entries pending this long (default 30000)")
    parser.add_argument("--maxlen", type=int, default=0, metavar="N",
                        help="trim the output and dead-letter streams to about N entries (default: no trim)")
    parser.add_argument("--dedupe-ttl-s", type=int, default=7 * 24 * 3600, metavar="S",
                        help="how long a written result's dedupe key is kept (default 7 days)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="per-call deadline (default 30)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="Prometheus /metrics address")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port; 0 picks one")
    parser.set_defaults(func=run)


def _fail(code: int, message: str) -> int:
    print(f"shunter stream: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from services.jobs.infer import JobFailed
    from services.jobs.stream import StreamOptions, StreamSetupError, serve_stream

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = args.target or os.environ.get("SHUNTER_ROUTER")
    if not target:
        return _fail(2, "no --target and no $SHUNTER_ROUTER: say where the router or worker is")
    try:
        tls = tls_args.client_tls(args)
    except tls_args.FlagError as exc:
        return _fail(2, str(exc))
    for flag, value in (("--batch", args.batch), ("--block-ms", args.block_ms),
                        ("--max-deliveries", args.max_deliveries), ("--claim-idle-ms", args.claim_idle_ms),
                        ("--dedupe-ttl-s", args.dedupe_ttl_s)):
        if value < 1:
            return _fail(2, f"{flag} must be >= 1, got {value}")
    if args.maxlen < 0:
        return _fail(2, f"--maxlen must be >= 0, got {args.maxlen}")
    opts = StreamOptions(
        model=args.model, redis_url=args.redis_url, input_stream=args.input_stream,
        output_stream=args.output_stream, group=args.group, consumer=args.consumer or socket.gethostname(),
        target=target, api_key=args.api_key or os.environ.get("SHUNTER_API_KEY"), version=args.version, tls=tls,
        batch=args.batch, block_ms=args.block_ms, dead_letter_stream=args.dead_letter_stream,
        max_deliveries=args.max_deliveries, claim_idle_ms=args.claim_idle_ms, maxlen=args.maxlen,
        dedupe_ttl_s=args.dedupe_ttl_s, timeout_s=args.timeout,
    )
    try:
        return asyncio.run(serve_stream(opts, args.metrics_host, args.metrics_port))
    except StreamSetupError as exc:
        return _fail(2, str(exc))
    except JobFailed as exc:
        return _fail(1, str(exc))
