"""Hostile requests against a real router and worker: no UNKNOWN or INTERNAL, ever.

Every malformed request must get a status that names the problem (INVALID_ARGUMENT,
NOT_FOUND, UNAUTHENTICATED, ...); UNKNOWN or INTERNAL means an exception escaped a
servicer, which is a bug whatever the input. After each target the server must still
serve a valid request.

Case counts: ``SHUNTER_FUZZ_CASES`` per target (a small number here, so scripts/test stays
quick and deterministic; ``scripts/reliability`` runs ≥ 10,000 per target with fresh
randomness).
"""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from services.gen.inference import grpc_service_pb2 as pb
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.router.cluster import Cluster, start_cluster
from tests.support import fuzz_requests as fz

CASES = int(os.environ.get("SHUNTER_FUZZ_CASES", "150"))
#: Fixed randomness in CI so a run is repeatable; the long run explores.
DERANDOMIZE = os.environ.get("SHUNTER_FUZZ_RANDOM", "") != "1"
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
FUZZ = settings(
    max_examples=CASES, deadline=None, database=None, derandomize=DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    started = start_cluster(tmp_path_factory.mktemp("fuzz-cluster"), workers=1, routers=1)
    started.set_policy("calc", {"1": 100})
    yield started
    router_log = started.routers[0].logs()
    started.stop()
    assert "Traceback" not in router_log, f"the router logged an unexpected error:\n{router_log}"


@pytest.fixture(scope="module", params=["router", "worker"])
def target(request, cluster: Cluster) -> Iterator[tuple[grpc.Channel, tuple[tuple[str, str], ...]]]:
    """A channel to one service, and the metadata a legitimate caller would send it."""
    if request.param == "router":
        address, key = cluster.routers[0].address, cluster.keys["data"]
    else:
        address, key = cluster.workers[0].address, cluster.admin_key
    channel = grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)])
    yield channel, (("authorization", f"Bearer {key}"),)
    channel.close()


def _call(target, body: bytes) -> None:
    channel, metadata = target
    try:
        channel.unary_unary(METHOD)(body, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        assert error.code() not in FORBIDDEN, f"{error.code().name}: {error.details()!r} for {body!r}"


def _still_serves(target) -> None:
    channel, metadata = target
    request = pb.ModelInferRequest(model_name="calc", model_version="1")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, "<f4").tobytes())
    reply = channel.unary_unary(METHOD)(request.SerializeToString(), metadata=metadata, timeout=30)
    response = pb.ModelInferResponse.FromString(reply)
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [2.0] * 4


def test_structured_requests(target) -> None:
    @FUZZ
    @given(fz.structured_requests())
    def check(request: pb.ModelInferRequest) -> None:
        _call(target, request.SerializeToString())

    check()
    _still_serves(target)


def test_random_bytes(target) -> None:
    @FUZZ
    @given(fz.RANDOM_BYTES)
    def check(body: bytes) -> None:
        _call(target, body)

    check()
    _still_serves(target)


def test_mutated_requests(target) -> None:
    @FUZZ
    @given(fz.mutated_requests())
    def check(body: bytes) -> None:
        _call(target, body)

    check()
    _still_serves(target)


def test_streams(target) -> None:
    channel, metadata = target

    @FUZZ
    @given(fz.STREAMS)
    def check(messages: list[bytes]) -> None:
        stream = channel.stream_stream(STREAM_METHOD)(iter(messages), metadata=metadata, timeout=30)
        try:
            for reply in stream:
                # A bad message is answered in-band; the stream goes on.
                pb.ModelStreamInferResponse.FromString(reply)
        except grpc.RpcError as error:
            assert error.code() not in FORBIDDEN, f"{error.code().name}: {error.details()!r} for {messages!r}"

    check()
    _still_serves(target)


def test_an_unparseable_message_is_invalid_argument_and_logged_once(cluster: Cluster) -> None:
    key = (("authorization", f"Bearer {cluster.admin_key}"),)  # cluster workers serve routers and admins
    with grpc.insecure_channel(cluster.workers[0].address) as channel:
        for _ in range(50):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(METHOD)(b"\n", metadata=key, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid ModelInferRequest" in caught.value.details()
    log = cluster.workers[0].logs()
    # Rate-limited: 50 bad messages in a few seconds give at most a couple of lines.
    assert 1 <= log.count("is not a valid ModelInferRequest") <= 2, log
    assert "Exception deserializing" not in log and "Traceback" not in log, log


def _model_labels(url: str, metric: str = "shunter_requests_total") -> set[str]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return set(re.findall(rf'^{metric}{{[^}}]*model="([^"]*)"', text, flags=re.M))


def test_made_up_model_names_do_not_become_metric_series(cluster: Cluster) -> None:
    """Names a client invents share one label: /metrics stays bounded by the catalogue."""
    names = [f"probe-{i}" for i in range(40)]
    for service, key in ((cluster.workers[0], cluster.admin_key), (cluster.routers[0], cluster.keys["data"])):
        with grpc.insecure_channel(service.address) as channel:
            for name in names:
                request = pb.ModelInferRequest(model_name=name, model_version="7")
                request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
                request.raw_input_contents.append(bytes(16))
                with pytest.raises(grpc.RpcError):
                    channel.unary_unary(METHOD)(
                        request.SerializeToString(), metadata=(("authorization", f"Bearer {key}"),), timeout=30
                    )
        labels = _model_labels(service.metrics_url)
        assert not labels & set(names), labels
        assert "_unknown" in labels
    # The registry labels only what an authenticated caller named.
    with grpc.insecure_channel(cluster.registry.address) as channel:
        get_model = channel.unary_unary("/shunter.registry.v1.Registry/GetModel")
        for name in names:
            with pytest.raises(grpc.RpcError) as caught:
                get_model(rpb.GetModelRequest(name=name).SerializeToString(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not _model_labels(cluster.registry.metrics_url) & set(names)
