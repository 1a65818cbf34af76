"""Run a benchmark: prepare the request once, fan the load out over processes, merge.

The parent asks the server for the model's metadata (and config, when offered), builds
and serializes one request, and checks it with a single probe call, so a wrong model
name or a bad input fails fast with the server's message instead of as a wall of error
codes. Client processes are started with ``spawn`` (never ``fork`` after gRPC has run in
the parent), connect, report ready, and start together at one shared monotonic time.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import queue
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from services.bench.loadgen import CHANNEL_OPTIONS, MODEL_INFER, ProcessPlan, drive, open_channel
from services.bench.payload import build_request, make_inputs, plan_inputs
from services.bench.requests import RequestError, RequestSpec, payloads_from_file, user_value
from services.bench.schedule import split_evenly, split_rate
from services.bench.stats import ProcessResult, merge, send_lag_summary_ms, summarize, users_summary
from services.common.tls import ClientTls, TlsFileError
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

#: Probe failures that mean the request itself is wrong; anything else (a rate limit,
#: a full queue) is what the user may be measuring, so it only warns.
_FATAL_PROBE_CODES = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}
)

#: Head start between "everyone is ready" and the shared start time.
_START_MARGIN_S = 0.05


class BenchError(Exception):
    """The benchmark cannot run (unreachable target, unknown model, bad request)."""


def default_processes() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class BenchOptions:
    target: str
    model: str
    model_version: str = ""
    #: Closed loop: concurrent callers in total. Ignored in open loop.
    concurrency: int = 16
    duration_s: float = 10.0
    #: Open loop: total arrivals per second (Poisson); None means closed loop.
    rate: float | None = None
    api_key: str | None = None
    #: Client processes; None means min(4, CPU count).
    processes: int | None = None
    batch_rows: int = 1
    warmup_s: float = 0.5
    timeout_s: float = 10.0
    #: Open loop: most calls outstanding at once, over all processes.
    max_inflight: int = 1024
    #: Length given to -1 (variable) dimensions of the inputs.
    dim_length: int = 16
    seed: int = 0
    connect_timeout_s: float = 10.0
    #: Connections in total, spread over the processes (each opens at least one);
    #: None means one per process.
    connections: int | None = None
    #: TLS to the target; ``cacert``: a PEM file of roots to trust (implies TLS; the CLI
    #: takes it from $SHUNTER_TLS_CA when --cacert is not given, as the other tools do).
    tls: bool = False
    cacert: str | None = None
    #: Extra metadata on every call (``-H KEY=VALUE``).
    headers: tuple[tuple[str, str], ...] = ()
    #: A header given a fresh value on every call (sticky splits see a new user each time).
    vary_header: str = ""
    #: With ``vary_header``: N simulated users, each keeping one value (0: fresh per call).
    users: int = 0
    #: ``.npz`` file whose rows the requests are cut from, each call the next one.
    input_file: str | None = None
    #: Fresh random inputs on every call instead of one request sent again and again.
    random_inputs: bool = False
    #: Each connection carries one ModelStreamInfer call; every request is a message on it.
    stream: bool = False

    def validate(self) -> None:
        if self.duration_s <= 0:
            raise BenchError(f"--duration must be > 0, got {self.duration_s}")
        if self.warmup_s < 0:
            raise BenchError(f"--warmup must be >= 0, got {self.warmup_s}")
        if self.rate is None and self.concurrency < 1:
            raise BenchError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise BenchError(f"--rate must be > 0, got {self.rate}")
        if self.processes is not None and self.processes < 1:
            raise BenchError(f"--processes must be >= 1, got {self.processes}")
        if self.max_inflight < 1:
            raise BenchError(f"--max-inflight must be >= 1, got {self.max_inflight}")
        if self.connections is not None and self.connections < 1:
            raise BenchError(f"--connections must be >= 1, got {self.connections}")
        if self.input_file and self.random_inputs:
            raise BenchError("--input and --random-inputs exclude each other")
        if self.stream and self.vary_header:
            raise BenchError(
                "--stream sends one stream's metadata with all its requests: --vary-header needs unary calls"
            )
        if self.users < 0:
            raise BenchError(f"--users must be >= 1, got {self.users}")
        if self.users and not self.vary_header:
            raise BenchError("--users needs --vary-header NAME (the header each simulated user keeps)")

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        auth = (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()
        return (*auth, *self.headers)

    @property
    def use_tls(self) -> bool:
        return self.tls or bool(self.cacert)

    def client_tls(self) -> ClientTls | None:
        """How to dial the target (services/common/tls.py); None: plaintext."""
        if not self.use_tls:
            return None
        return ClientTls(ca_file=Path(self.cacert) if self.cacert else None)


@dataclass(frozen=True)
class Prepared:
    payload: bytes
    #: Shapes actually sent, e.g. {"input__0": "FP32[1, 64]"}, for the report header.
    inputs: dict[str, str]
    #: What each call sends, when it varies per call.
    requests: RequestSpec | None = None


def prepare(options: BenchOptions) -> Prepared:
    """Fetch metadata, build and serialize the request, and probe it once."""
    metadata = options.grpc_metadata or None
    client_tls = options.client_tls()
    try:
        channel = open_channel(options.target, CHANNEL_OPTIONS, tls=client_tls, aio=False)
    except TlsFileError as exc:
        raise BenchError(f"--cacert: {exc}") from None
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=options.connect_timeout_s)
        except grpc.FutureTimeoutError:
            hint = (" over TLS (check --cacert and that the server speaks TLS)" if options.use_tls
                    else " (a TLS server needs --tls or --cacert)")
            raise BenchError(
                f"cannot connect to {options.target} within {options.connect_timeout_s:g} s{hint}"
            ) from None
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            meta = stub.ModelMetadata(
                pb.ModelMetadataRequest(name=options.model, version=options.model_version),
                metadata=metadata,
                timeout=options.timeout_s,
            )
        except grpc.RpcError as exc:
            raise BenchError(f"ModelMetadata for '{options.model}' failed: {_describe(exc)}") from None
        max_batch_size: int | None = None
        config_ranks: dict[str, int] | None = None
        try:
            config = stub.ModelConfig(
                pb.ModelConfigRequest(name=options.model, version=options.model_version),
                metadata=metadata,
                timeout=options.timeout_s,
            ).config
            if config.input:  # a partial config without inputs settles nothing
                max_batch_size = config.max_batch_size
                config_ranks = {i.name: len(i.dims) for i in config.input}
        except grpc.RpcError as exc:
            logger.debug("ModelConfig unavailable (%s); inferring the batch dimension", _describe(exc))
        try:
            plans = plan_inputs(
                meta,
                max_batch_size=max_batch_size,
                batch_rows=options.batch_rows,
                dim_length=options.dim_length,
                config_ranks=config_ranks,
            )
        except ValueError as exc:
            raise BenchError(str(exc)) from None
        arrays = make_inputs(plans, np.random.default_rng(options.seed))
        payload = build_request(options.model, options.model_version, plans, arrays).SerializeToString()
        requests = None
        if options.input_file or options.random_inputs or options.vary_header:
            payloads: tuple[bytes, ...] = (payload,)
            if options.input_file:
                # As plan_inputs decides it: ModelConfig's max_batch_size, else a leading -1 everywhere.
                batched = (max_batch_size > 0 if max_batch_size is not None
                           else all(t.shape and t.shape[0] == -1 for t in meta.inputs))
                try:
                    payloads = payloads_from_file(Path(options.input_file), options.model, options.model_version,
                                                  plans, batched)
                except RequestError as exc:
                    raise BenchError(str(exc)) from None
                payload = payloads[0]
            requests = RequestSpec(
                payloads=payloads, metadata=options.grpc_metadata, vary_header=options.vary_header,
                users=options.users, random_inputs=options.random_inputs, model=options.model,
                model_version=options.model_version, input_plans=tuple(plans),
            )
        raw = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        try:
            reply = raw(payload, metadata=metadata, timeout=options.timeout_s)
            if not pb.ModelInferResponse.FromString(reply).outputs:
                logger.warning("probe call returned no outputs")
        except grpc.RpcError as exc:
            if exc.code() in _FATAL_PROBE_CODES:
                raise BenchError(f"probe ModelInfer failed: {_describe(exc)}") from None
            logger.warning("probe ModelInfer failed (%s); running anyway", _describe(exc))
    return Prepared(
        payload=payload,
        inputs={p.name: f"{p.datatype}{list(p.shape)}" for p in plans},
        requests=requests,
    )


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'ERROR'}: {details}"


def process_plans(options: BenchOptions, payload: bytes, requests: RequestSpec | None = None) -> list[ProcessPlan]:
    """Split the load: callers (closed) or rate (open) and the in-flight cap."""
    processes = options.processes or default_processes()
    if options.rate is None:
        processes = min(processes, options.concurrency)
        concurrencies = split_evenly(options.concurrency, processes)
        rates: list[float | None] = [None] * processes
    else:
        processes = min(processes, options.max_inflight)
        concurrencies = [0] * processes
        rates = list(split_rate(options.rate, processes))
    caps = split_evenly(options.max_inflight, processes)
    connections = split_evenly(max(options.connections or processes, processes), processes)
    base = ProcessPlan(
        target=options.target,
        payload=payload,
        metadata=options.grpc_metadata,
        concurrency=0,
        rate=None,
        max_inflight=1,
        warmup_s=options.warmup_s,
        duration_s=options.duration_s,
        timeout_s=options.timeout_s,
        connect_timeout_s=options.connect_timeout_s,
        seed=options.seed,
        requests=requests,
        tls=options.client_tls(),
        stream=options.stream,
    )
    return [
        replace(base, concurrency=c, rate=r, max_inflight=cap, seed=options.seed + 1 + i, connections=n)
        for i, (c, r, cap, n) in enumerate(zip(concurrencies, rates, caps, connections, strict=True))
    ]


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the whole benchmark and return the report (see stats.summarize)."""
    options.validate()
    prepared = prepare(options)
    plans = process_plans(options, prepared.payload, prepared.requests)
    if len(plans) == 1:
        results, start_at = _run_inline(plans[0])
    else:
        results, start_at = _run_spawned(plans, options)
    measure_start = start_at + options.warmup_s
    merged = merge(results)
    extra: dict[str, Any] = {
        "target": options.target,
        "model": options.model,
        "model_version": options.model_version,
        "mode": "closed" if options.rate is None else "open",
        "stream": options.stream,
        "concurrency": options.concurrency if options.rate is None else None,
        "rate": options.rate,
        "processes": len(plans),
        "connections": sum(plan.connections for plan in plans),
        "batch_rows": options.batch_rows,
        "warmup_s": options.warmup_s,
        "inputs": prepared.inputs,
        "requests_from": _requests_from(prepared.requests),
        "unsent": merged.unsent,
    }
    if options.rate is not None:
        extra["send_lag_ms"] = send_lag_summary_ms(merged.send_lag_s)
    if options.users:
        extra["users"] = users_summary(merged.user_versions, options.users, user_value)
    return summarize(
        merged,
        measure_start=measure_start,
        measure_end=measure_start + options.duration_s,
        batch_rows=options.batch_rows,
        extra=extra,
    )


def _requests_from(spec: RequestSpec | None) -> str:
    """How the calls' requests were made, for the report: fixed, file (N requests) or random."""
    if spec is None or (not spec.random_inputs and len(spec.payloads) == 1 and not spec.vary_header):
        source = "one request, sent every call"
    elif spec.random_inputs:
        source = "fresh random inputs every call"
    elif len(spec.payloads) > 1:
        source = f"{len(spec.payloads)} requests from --input, in turn"
    else:
        source = "one request, sent every call"
    if spec is not None and spec.vary_header and spec.users:
        source += f"; {spec.vary_header} from {spec.users} simulated user(s) in turn"
    elif spec is not None and spec.vary_header:
        source += f"; {spec.vary_header} fresh every call"
    return source


def _run_inline(plan: ProcessPlan) -> tuple[list[ProcessResult], float]:
    start: dict[str, float] = {}

    async def start_now() -> float:
        start["at"] = time.monotonic() + _START_MARGIN_S
        return start["at"]

    try:
        result = asyncio.run(drive(plan, start_now))
    except TimeoutError:
        raise BenchError(f"cannot connect to {plan.target}") from None
    return [result], start["at"]


def _child_main(index: int, plan: ProcessPlan, events: Any, go: Any, start_at: Any) -> None:
    """Entry point of a spawned client process; talks to the parent through ``events``."""

    async def ready_then_wait() -> float:
        events.put(("ready", index, None))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        return float(start_at.value)

    try:
        result = asyncio.run(drive(plan, ready_then_wait))
    except BaseException as exc:  # report, never hang the parent
        events.put(("error", index, f"{type(exc).__name__}: {exc}"))
        return
    events.put(("result", index, result))


def _run_spawned(plans: list[ProcessPlan], options: BenchOptions) -> tuple[list[ProcessResult], float]:
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=_child_main, args=(i, plan, events, go, start_at), daemon=True)
        for i, plan in enumerate(plans)
    ]
    for proc in procs:
        proc.start()
    try:
        _await_events(procs, events, "ready", deadline=time.monotonic() + options.connect_timeout_s + 60)
        start_at.value = time.monotonic() + _START_MARGIN_S
        go.set()
        budget = options.warmup_s + options.duration_s + options.timeout_s + 60
        results = _await_events(procs, events, "result", deadline=time.monotonic() + budget)
        for proc in procs:
            proc.join(10)
        return [results[i] for i in range(len(plans))], start_at.value
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()


def _await_events(procs: list, events: Any, kind: str, *, deadline: float) -> dict[int, Any]:
    """Wait until every process has sent a ``kind`` event; fail on errors or deaths."""
    got: dict[int, Any] = {}
    quiet_polls_since_death = 0
    while len(got) < len(procs):
        try:
            what, index, value = events.get(timeout=0.2)
        except queue.Empty:
            dead = [i for i, p in enumerate(procs) if i not in got and p.exitcode is not None]
            # A process flushes its queue before it exits, but give the pipe a moment.
            quiet_polls_since_death = quiet_polls_since_death + 1 if dead else 0
            if quiet_polls_since_death > 5:
                raise BenchError(f"client process {dead[0]} exited ({procs[dead[0]].exitcode})") from None
            if time.monotonic() > deadline:
                raise BenchError(f"client processes did not report '{kind}' in time") from None
            continue
        if what == "error":
            raise BenchError(f"client process {index} failed: {value}")
        if what == kind:
            got[index] = value
    return got
