"""The load loops: closed loop (fixed concurrency) and open loop (Poisson arrivals).

Each client process runs one asyncio loop with its share of the connections (one
grpc.aio channel each, callers or arrivals taken in turn) and sends pre-serialized
ModelInferRequest bytes through a raw unary call (no serializer, no deserializer), so a
call costs the client one gRPC round trip and nothing else (unless ``--random-inputs``
builds each request afresh; see requests.py). With ``--stream`` each connection carries
one ModelStreamInfer call instead and every call is one message on it (stream.py). Several
connections matter for a server that spreads whole connections over processes
(SO_REUSEPORT): one connection reaches one of its processes.

Timeline, on the system-wide monotonic clock shared by every process:
``start_at`` → warm-up (load runs, nothing recorded) → ``measure_start`` → measured
window → ``end``: no new calls; calls already sent are awaited and counted.

Open loop follows wrk2: arrival *i* is due at ``start_at + offset_i`` whether or not
earlier calls have returned, and its latency runs from that scheduled time, so a server
that falls behind shows its queueing in the percentiles instead of silently slowing the
client down (coordinated omission). A per-process cap on in-flight calls keeps a stalled
server from making the client explode: an arrival that finds the cap reached is dropped
and counted as ``unsent`` rather than queued, so every call that is sent goes on time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from services.bench.requests import RequestSource, RequestSpec
from services.bench.schedule import PoissonArrivals
from services.bench.stats import ProcessResult
from services.bench.stream import StreamCaller
from services.common import tls as tls_channels
from services.common.tls import ClientTls
from services.gen.inference import grpc_service_pb2 as pb

logger = logging.getLogger(__name__)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

#: Large messages both ways (embeddings × 64 rows), and no transparent retries: the
#: benchmark must see every status the server returns.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)
#: Each load channel gets a connection of its own: by default channels with the same
#: options share one from a process-wide pool.
LOAD_CHANNEL_OPTIONS = (*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1))


@dataclass(frozen=True)
class ProcessPlan:
    """What one client process does; plain data so it can cross a process boundary."""

    target: str
    payload: bytes
    metadata: tuple[tuple[str, str], ...]
    #: Closed loop: callers in this process. Ignored in open loop.
    concurrency: int
    #: Open loop: arrivals per second for this process; None means closed loop.
    rate: float | None
    max_inflight: int
    warmup_s: float
    duration_s: float
    timeout_s: float
    connect_timeout_s: float
    seed: int
    #: Connections (channels) this process opens.
    connections: int = 1
    #: What calls send when it varies per call; None: ``payload`` and ``metadata`` every time.
    requests: RequestSpec | None = None
    #: TLS to the target (its ``ca_file`` None: the system's roots); None: plaintext.
    tls: ClientTls | None = None
    #: One ModelStreamInfer call per connection, each request a message on it (stream.py).
    stream: bool = False


class _Recorder:
    """Appends one sample per counted call; cheap enough to sit on the hot path."""

    def __init__(self) -> None:
        self.latencies = array("d")
        self.lags = array("d")
        self.codes: dict[str, int] = {}
        self.last_done = 0.0
        self.unsent = 0
        self.user_versions: dict[tuple[int, str], int] = {}

    def record(self, code: str, latency_s: float, done: float, seen: tuple[int, str] | None = None) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        if code == "OK":
            self.latencies.append(latency_s)
        if seen is not None:
            self.user_versions[seen] = self.user_versions.get(seen, 0) + 1
        if done > self.last_done:
            self.last_done = done

    def result(self) -> ProcessResult:
        return ProcessResult(
            ok_latencies_s=np.frombuffer(self.latencies, dtype=np.float64).copy(),
            codes=dict(self.codes),
            last_done=self.last_done,
            unsent=self.unsent,
            send_lag_s=np.frombuffer(self.lags, dtype=np.float64).copy(),
            user_versions=dict(self.user_versions),
        )


def open_channel(target: str, options, *, tls: ClientTls | None, aio: bool = True):
    """A channel to ``target``, plaintext or TLS, made as every Shunter tool makes it (services/common/tls.py).

    The blocking one (``aio=False``) is for the parent's metadata and probe calls. Raises
    TlsFileError for a CA file that cannot be read or is not PEM.
    """
    if aio:
        return tls_channels.channel(target, options=options, tls=tls)
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])


async def _one_call(call, source: RequestSource, plan: ProcessPlan) -> tuple[str, tuple[int, str] | None]:
    """Send the next request once; return the final status code name and, for a simulated
    user's OK call (``--users``), (user, the version that answered)."""
    payload, metadata, user = source.next_call()
    if isinstance(call, StreamCaller):
        return await call.infer(payload, plan.timeout_s), None
    try:
        reply = await call(payload, metadata=metadata, timeout=plan.timeout_s)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, None
    if user is None:
        return "OK", None
    # Only with --users: parsing every reply costs client CPU the plain benchmark does not pay.
    return "OK", (user, pb.ModelInferResponse.FromString(reply).model_version)


async def _closed_loop(calls: list, source: RequestSource, plan: ProcessPlan, rec: _Recorder,
                       measure_start: float, end: float) -> None:
    monotonic = time.monotonic

    async def caller(call) -> None:
        while True:
            sent = monotonic()
            if sent >= end:
                return
            code, seen = await _one_call(call, source, plan)
            done = monotonic()
            if sent >= measure_start:
                rec.record(code, done - sent, done, seen)

    await asyncio.gather(*(caller(calls[i % len(calls)]) for i in range(plan.concurrency)))


async def _open_loop(
    calls: list, source: RequestSource, plan: ProcessPlan, rec: _Recorder, start_at: float, measure_start: float,
    end: float,
) -> None:
    assert plan.rate is not None
    monotonic = time.monotonic
    in_flight: set[asyncio.Task] = set()

    async def fire(due: float, call) -> None:
        sent = monotonic()
        code, seen = await _one_call(call, source, plan)
        done = monotonic()
        if due >= measure_start:
            rec.record(code, done - due, done, seen)
            rec.lags.append(sent - due)

    for arrival, offset in enumerate(PoissonArrivals(plan.rate, np.random.default_rng(plan.seed))):
        due = start_at + offset
        if due >= end:
            break
        delay = due - monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= plan.max_inflight:
            # Dropping (not queueing) keeps every sent call on schedule; the drops say
            # the offered rate outran what the server (or the cap) could take.
            if due >= measure_start:
                rec.unsent += 1
            continue
        task = asyncio.create_task(fire(due, calls[arrival % len(calls)]))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)


async def drive(plan: ProcessPlan, wait_for_start: Callable[[], Awaitable[float]]) -> ProcessResult:
    """Connect, report ready through ``wait_for_start`` (which returns the shared start
    time), run the load, and return what was measured."""
    channels = [
        open_channel(plan.target, LOAD_CHANNEL_OPTIONS, tls=plan.tls) for _ in range(plan.connections)
    ]
    source = RequestSource(plan.requests or RequestSpec((plan.payload,), plan.metadata), plan.seed, str(plan.seed))
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), plan.connect_timeout_s
        )
        if plan.stream:
            metadata = (plan.requests.metadata if plan.requests else plan.metadata) or None
            calls = [StreamCaller(channel, metadata, f"{plan.seed}.{i}") for i, channel in enumerate(channels)]
        else:
            calls = [
                channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
                for channel in channels
            ]
        start_at = await wait_for_start()
        measure_start = start_at + plan.warmup_s
        end = measure_start + plan.duration_s
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        rec = _Recorder()
        if plan.rate is None:
            await _closed_loop(calls, source, plan, rec, measure_start, end)
        else:
            await _open_loop(calls, source, plan, rec, start_at, measure_start, end)
        if plan.stream:
            await asyncio.gather(*(call.close() for call in calls))
        return rec.result()
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
