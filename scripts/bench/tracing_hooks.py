#!/usr/bin/env python
"""CPU per request of the tracing hooks alone, in-process: off, and on at a sampling ratio.

Runs the router's hooks (interceptor begin/end, the auth/split/validated events, the
forward child and the outgoing carrier) and the worker's (begin/end, adopting the
router's unsampled context, the batcher's ``queued``) on a fake call, N times each.
Prints microseconds per request; scripts/bench/tracing.py runs it next to the
end-to-end figures, since those are noisy on a shared machine.

    .venv/bin/python scripts/bench/tracing_hooks.py [--ratio 0.01] [-n 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.common import edge, tracing  # noqa: E402
from services.gen.inference import grpc_service_pb2 as pb  # noqa: E402


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer shk_x_y"),)


def router_request(chain: list[edge.Interceptor]) -> bytes:
    call = edge.RpcCall("router", "ModelInfer", _Context())
    edge.CURRENT.set(call)
    for interceptor in chain:
        interceptor.begin(call)
    trace = tracing.current()
    trace.event("auth")
    trace.event("split", {"shunter.variant": "1"})
    trace.set("shunter.variant", "1")
    trace.event("validated")
    with trace.child("forward", client=True):
        carrier = trace.outgoing({})
    for interceptor in reversed(chain):
        interceptor.end(call)
    return carrier


def worker_request(chain: list[edge.Interceptor], parameters) -> None:
    call = edge.RpcCall("worker", "ModelStreamInfer", _Context())
    edge.CURRENT.set(call)
    for interceptor in chain:
        interceptor.begin(call)
    tracing.current().adopt(parameters)
    tracing.queued()
    for interceptor in reversed(chain):
        interceptor.end(call)


def per_request_us(fn, n: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("-n", type=int, default=20000)
    args = parser.parse_args()
    # What a router sends on for a request it did not sample.
    unsampled = tracing.carrier_fields("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    request = pb.ModelInferRequest(model_name="m").SerializeToString() + unsampled
    parameters = pb.ModelInferRequest.FromString(request).parameters

    def per_request(chain: list[edge.Interceptor]) -> dict[str, float]:
        return {
            "router": per_request_us(lambda: router_request(chain), args.n),
            "worker": per_request_us(lambda: worker_request(chain, parameters), args.n),
        }

    off = per_request([])
    # Spans stay buffered while measuring: exporting is the span processor's thread's work
    # (its cost shows in scripts/bench/tracing.py), and here it would only retry a closed port.
    os.environ.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=str(args.ratio))
    os.environ.update(OTEL_BSP_MAX_QUEUE_SIZE="1000000", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="1000000")
    os.environ.update(OTEL_BSP_SCHEDULE_DELAY="3600000")
    tracing.configure("bench", "127.0.0.1:1")
    on = per_request(tracing.interceptors("bench"))
    print(json.dumps({"ratio": args.ratio, "off_us": off, "on_us": on, "added_us": {k: on[k] - off[k] for k in on}}))
    sys.stdout.flush()
    os._exit(0)  # no exporter shutdown: its retries to the closed port would only add waiting


if __name__ == "__main__":
    sys.exit(main())
