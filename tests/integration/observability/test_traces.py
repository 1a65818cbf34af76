"""Traces router → worker, exported by real processes to a real OTLP/gRPC collector.

redis-server, a registry, one worker and two routers run as processes. Router ``A`` samples
every request (the SDK default); router ``B`` and the worker sample no request of their
own (``parentbased_traceidratio`` at 0), so what the worker and ``B`` record shows the
parent-based rule: a sampled ``traceparent`` is traced whatever the ratio.
"""

from __future__ import annotations

import asyncio
import textwrap

import numpy as np
import pytest
import redis

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from services.gen.inference import grpc_service_pb2 as pb
from services.router.payload_log import decode
from tests.integration.router.client import Client, auth, calc_request
from tests.integration.router.cluster import Cluster, wait_for, write_repository
from tests.support.otlp_collector import Collector, Span
from tests.support.processes import start_redis, start_service

SLOW_CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: IN, datatype: FP32, shape: [4]}]
outputs: [{name: OUT, datatype: FP32, shape: [4]}]
dynamic_batching: {max_queue_delay_us: 100000, max_queue_size: 256}
"""
SLOW_MODEL = """
import time


def infer(inputs):
    time.sleep(0.2)  # requests arriving meanwhile queue up and share the next batch
    return {"OUT": inputs["IN"]}
"""
FIXED_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
FIXED_PARENT_ID = "00f067aa0ba902b7"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
PAYLOAD_STREAM = "shunter:payloads"
NO_ROOTS = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}


@pytest.fixture(scope="module")
def collector():
    started = Collector()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, collector):
    tmp = tmp_path_factory.mktemp("trace-cluster")
    repository = write_repository(tmp / "models")
    (repository / "slow" / "1").mkdir(parents=True)
    (repository / "slow" / "1" / "model.py").write_text(SLOW_MODEL)
    (repository / "slow" / "config.yaml").write_text(textwrap.dedent(SLOW_CONFIG))
    redis = start_redis()
    _, admin_key = api_keys.new_key()
    (tmp / "admin.key").write_text(admin_key)
    registry = start_service(["registry", "--redis-url", redis.url, "--admin-key-file", str(tmp / "admin.key"),
                              "--port", "0", "--otlp-endpoint", collector.endpoint], env=FAST_EXPORT)
    cluster = Cluster(redis=redis, registry=registry, admin_key=admin_key, repository=repository)
    key_env = {"SHUNTER_ADMIN_KEY": admin_key}
    otlp = ["--otlp-endpoint", collector.endpoint]
    try:
        cluster.admin(lambda c: register_repository(c, repository, scan(repository)))
        worker = start_service(
            ["worker", "--registry", registry.address, "--serve", "calc,echo,slow", "--trusted-repository",
             str(repository), "--port", "0", *otlp],
            env={**key_env, **FAST_EXPORT, **NO_ROOTS},
        )
        cluster.workers.append(worker)
        wait_for(lambda: worker.address in cluster.ready_worker_addresses(), 120, "worker ready")
        router_b = {**key_env, **FAST_EXPORT, **NO_ROOTS, "OTEL_SERVICE_NAME": "router-b"}
        payload_log = ["--payload-log", f"redis-stream://127.0.0.1:{redis.port}/0/{PAYLOAD_STREAM}",
                       "--payload-sample", "1"]
        unary = {**key_env, **FAST_EXPORT, "OTEL_SERVICE_NAME": "router-unary"}
        for env, extra in (({**key_env, **FAST_EXPORT}, payload_log), (router_b, []),
                           (unary, ["--worker-link", "unary"])):
            cluster.routers.append(start_service(
                ["router", "--registry", registry.address, "--redis-url", redis.url, "--port", "0", *otlp, *extra],
                env=env,
            ))
        cluster.create_key("data")
        cluster.set_policy("calc", {"1": 100})
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    logs = {s.address: s.logs() for s in [*cluster.routers, *cluster.workers]}
    cluster.stop()
    for address, log in logs.items():
        assert "Traceback" not in log, f"{address} logged an unexpected error:\n{log}"


def _trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id]


def _one(spans: list[Span], service: str, name: str) -> Span:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, f"expected one {service} {name!r} span, got {len(found)}"
    return found[0]


#: The spans of one request that went router → worker (the worker span's name varies by link).
WHOLE_TRACE = ("forward", "queue", "compute")


def _complete(trace_id_of_router: str | None = None, router: str = "router ModelInfer",
              worker: str = "worker ModelStreamInfer"):
    """A predicate: a trace with every span of a request that reached a worker.

    Each service exports on its own schedule, and a server span ends after its children,
    so the predicate waits for all of them rather than for any one.
    """
    wanted = {router, worker, *WHOLE_TRACE}

    def check(spans: list[Span]) -> list[Span] | None:
        roots = [s for s in spans if s.name == router
                 and (trace_id_of_router is None or s.trace_id == trace_id_of_router)]
        for root in roots:
            trace = _trace(spans, root.trace_id)
            if wanted <= {s.name for s in trace}:
                return trace
        return None

    return check


async def _infer(address: str, key: str, request: pb.ModelInferRequest, **metadata: str) -> pb.ModelInferResponse:
    async with Client(address) as client:
        return await client.stub.ModelInfer(request, metadata=auth(key, **metadata), timeout=30)


def test_one_trace_spans_router_and_worker_nested(cluster, collector):
    router_a = cluster.routers[0].address
    asyncio.run(_infer(router_a, cluster.keys["data"], calc_request()))
    trace = collector.wait_for(_complete(), what="a router → worker trace")

    router = _one(trace, "shunter-router", "router ModelInfer")
    assert router.parent_span_id == ""
    assert {"auth", "split", "validated"} <= set(router.events)
    assert router.attributes["shunter.model"] == "calc"
    assert router.attributes["shunter.version"] == "1"
    assert router.attributes["shunter.variant"] == "1"
    assert router.attributes["rpc.grpc.status_code"] == 0
    forward = _one(trace, "shunter-router", "forward")
    assert forward.parent_span_id == router.span_id
    # The router's stream link carried the context: the request did not leave the stream.
    worker = _one(trace, "shunter-worker", "worker ModelStreamInfer")
    assert worker.parent_span_id == forward.span_id
    assert worker.attributes["shunter.model"] == "calc"
    queue = _one(trace, "shunter-worker", "queue")
    compute = _one(trace, "shunter-worker", "compute")
    assert queue.parent_span_id == worker.span_id
    assert compute.parent_span_id == worker.span_id
    assert compute.attributes["shunter.batch_rows"] == 1
    assert compute.links == [(worker.trace_id, worker.span_id)]
    assert {s.service for s in trace} == {"shunter-router", "shunter-worker"}


def test_incoming_sampled_traceparent_keeps_its_trace_id_at_ratio_zero(cluster, collector):
    router_b = cluster.routers[1].address
    key = cluster.keys["data"]
    asyncio.run(_infer(router_b, key, calc_request(id_="untraced")))
    traceparent = f"00-{FIXED_TRACE_ID}-{FIXED_PARENT_ID}-01"
    asyncio.run(_infer(router_b, key, calc_request(id_="traced"), traceparent=traceparent))
    trace = collector.wait_for(_complete(FIXED_TRACE_ID), what="the trace of the fixed traceparent")

    router = _one(trace, "router-b", "router ModelInfer")
    assert router.parent_span_id == FIXED_PARENT_ID
    assert _one(trace, "shunter-worker", "worker ModelStreamInfer").trace_id == FIXED_TRACE_ID
    # Router B samples no root of its own: the request without a traceparent left no trace
    # (spans export in order, so it would be here by now).
    assert {s.trace_id for s in collector.snapshot() if s.service == "router-b"} == {FIXED_TRACE_ID}


def test_unsampled_traceparent_is_not_traced(cluster, collector):
    router_a = cluster.routers[0].address
    unsampled_trace = "11112222333344445555666677778888"
    asyncio.run(_infer(router_a, cluster.keys["data"], calc_request(),
                       traceparent=f"00-{unsampled_trace}-{FIXED_PARENT_ID}-00"))
    marker = "aaaabbbbccccddddeeeeffff00001111"
    asyncio.run(_infer(router_a, cluster.keys["data"], calc_request(),
                       traceparent=f"00-{marker}-{FIXED_PARENT_ID}-01"))
    collector.wait_for(_complete(marker), what="the marker trace")
    assert not _trace(collector.snapshot(), unsampled_trace)


def test_a_batch_compute_span_links_every_request_it_served(cluster, collector):
    router_a = cluster.routers[0].address
    key = cluster.keys["data"]

    async def burst() -> None:
        async with Client(router_a) as client:
            request = calc_request()
            request.model_name = "slow"
            await asyncio.gather(*(
                client.stub.ModelInfer(request, metadata=auth(key), timeout=30) for _ in range(8)
            ))

    asyncio.run(burst())

    def slow_spans(spans: list[Span]) -> tuple[list[Span], list[Span]] | None:
        workers = [s for s in spans if s.service == "shunter-worker" and s.name.startswith("worker ")
                   and s.attributes.get("shunter.model") == "slow"]
        computes = [s for s in spans if s.name == "compute" and s.attributes.get("shunter.model") == "slow"]
        linked = sum(len(c.links) for c in computes)
        return (workers, computes) if len(workers) == 8 and linked == 8 else None

    workers, computes = collector.wait_for(slow_spans, what="8 slow requests and their batches")
    by_id = {(w.trace_id, w.span_id): w for w in workers}
    served = [link for compute in computes for link in compute.links]
    assert sorted(served) == sorted(by_id), "each request is linked from exactly one compute span"
    for compute in computes:
        assert len(compute.links) == compute.attributes["shunter.batch_requests"]
        assert compute.attributes["shunter.batch_rows"] == len(compute.links)
        # Nested under the first request it served, and linked to that one too.
        assert (compute.trace_id, compute.parent_span_id) in compute.links
    # Requests that arrived while the model was busy shared a batch.
    assert max(len(c.links) for c in computes) > 1


def test_the_payload_log_records_the_request_with_its_trace_id(cluster, collector):
    router_a = cluster.routers[0].address
    asyncio.run(_infer(router_a, cluster.keys["data"], calc_request((5.0, 6.0, 7.0, 8.0), id_="logged")))
    client = redis.Redis(port=cluster.redis.port)

    def logged() -> dict | None:
        records = [decode(fields) for _, fields in client.xrange(PAYLOAD_STREAM)]
        return next((r for r in records if r["id"] == "logged"), None)

    wait_for(lambda: logged() is not None, 10, "the payload record")
    record = logged()
    assert (record["model"], record["version"]) == ("calc", "1")
    np.testing.assert_array_equal(record["inputs"]["IN"], [[5.0, 6.0, 7.0, 8.0]])
    np.testing.assert_array_equal(record["outputs"]["OUT"], [[10.0, 12.0, 14.0, 16.0]])
    assert record["latency_us"] > 0
    trace = collector.wait_for(_complete(record["trace_id"]), what="the logged request's trace")
    assert _one(trace, "shunter-router", "router ModelInfer").attributes["shunter.model"] == "calc"


def test_a_bad_payload_log_target_is_a_usage_error(cluster):
    import subprocess
    import sys

    from tests.support.processes import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "router", "--registry", cluster.registry.address,
         "--admin-key", cluster.admin_key, "--payload-log", "redis://127.0.0.1:6379/0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "redis-stream://[USER:PASSWORD@]HOST:PORT/DB/STREAM" in result.stderr


def test_a_client_stream_message_is_traced_from_the_streams_traceparent(cluster, collector):
    router_a = cluster.routers[0].address
    trace_id = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"

    async def stream() -> None:
        async with Client(router_a) as client:
            call = client.stub.ModelStreamInfer(
                metadata=auth(cluster.keys["data"], traceparent=f"00-{trace_id}-{FIXED_PARENT_ID}-01"), timeout=30
            )
            await call.write(calc_request(id_="s1"))
            response = await call.read()
            assert response.error_message == "" and response.infer_response.id == "s1"
            await call.done_writing()

    asyncio.run(stream())

    trace = collector.wait_for(_complete(trace_id, router="router ModelStreamInfer"),
                               what="the stream message's trace")
    router = _one(trace, "shunter-router", "router ModelStreamInfer")
    assert router.parent_span_id == FIXED_PARENT_ID
    forward = _one(trace, "shunter-router", "forward")
    assert _one(trace, "shunter-worker", "worker ModelStreamInfer").parent_span_id == forward.span_id


def test_the_registry_traces_its_calls_but_not_heartbeats_or_watches(cluster, collector):
    cluster.admin(lambda c: c.list_workers())
    collector.wait_for(lambda spans: any(s.service == "shunter-registry" and s.name == "registry ListWorkers"
                                         for s in spans), what="a registry span")
    names = {s.name for s in collector.snapshot() if s.service == "shunter-registry"}
    assert "registry Heartbeat" not in names and "registry WatchRoutingTable" not in names
    assert "registry RegisterWorker" in names


def test_up_refuses_a_bad_otlp_endpoint_before_starting_anything(tmp_path):
    import subprocess
    import sys

    from tests.support.processes import ROOT

    repository = write_repository(tmp_path / "models")
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository), "--port", "0",
         "--run-dir", str(tmp_path / "run"), "--otlp-endpoint", "collector:4317/v1/traces"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "collector:4317/v1/traces" in done.stderr and "nothing was started" in done.stderr


def test_a_traced_calls_latency_sample_carries_its_trace_id_as_an_exemplar(cluster, collector):
    import re
    import urllib.request

    router = cluster.routers[0]
    asyncio.run(_infer(router.address, cluster.keys["data"], calc_request(id_="exemplar")))
    request = urllib.request.Request(router.metrics_url, headers={"Accept": "application/openmetrics-text"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    bucket = r'^shunter_request_duration_seconds_bucket\{[^}]*method="ModelInfer"[^}]*\} \S+ '
    exemplars = set(re.findall(bucket + r'# \{trace_id="([0-9a-f]{32})"\}', text, re.M))
    assert exemplars, "no exemplar on the router's latency histogram"
    # Each names a trace the collector has: the router span of a request it timed.
    collector.wait_for(
        lambda spans: exemplars <= {s.trace_id for s in spans if s.name == "router ModelInfer"},
        what="the exemplars' traces",
    )


def test_a_service_given_a_bad_endpoint_exits_2_naming_it():
    import subprocess
    import sys

    from tests.support.processes import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "registry", "--redis-url", "redis://127.0.0.1:1",
         "--otlp-endpoint", "ftp://collector:4317"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "ftp://collector:4317" in result.stderr


def test_on_the_unary_link_the_worker_takes_the_context_from_the_parameters_too(cluster, collector):
    router_unary = cluster.routers[2].address
    asyncio.run(_infer(router_unary, cluster.keys["data"], calc_request(id_="unary")))

    def unary_trace(spans: list[Span]) -> list[Span] | None:
        mine = [s for s in spans if s.service == "router-unary" and s.name == "router ModelInfer"]
        return next((t for r in mine if (t := _complete(r.trace_id, worker="worker ModelInfer")(spans))), None)

    trace = collector.wait_for(unary_trace, what="a trace through the unary link")
    forward = _one(trace, "router-unary", "forward")
    worker = _one(trace, "shunter-worker", "worker ModelInfer")
    assert worker.parent_span_id == forward.span_id
