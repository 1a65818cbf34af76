"""The router in a real cluster: routing, auth, validation, limits, splits, shadow, cache."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import grpc
import numpy as np
import pytest

from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.client import Client, auth, calc_request, echo_request, output
from tests.integration.router.cluster import Cluster, metric, wait_for, worker_inferences
from tests.integration.router.conftest import MAX_MESSAGE_BYTES
from tests.support.processes import start_service


def worker_infer_calls(cluster: Cluster) -> float:
    """Inference requests every worker has received, whatever their outcome."""
    return sum(worker_inferences(w.metrics_url) for w in cluster.workers if w.proc.poll() is None)


async def test_infer_split_version_in_response_and_trailer(cluster: Cluster):
    async with Client(cluster.routers[0].address) as client:
        call = client.stub.ModelInfer(calc_request(id_="req-1"), metadata=auth(cluster.keys["data"]))
        response = await call
        assert response.model_name == "calc" and response.model_version == "1" and response.id == "req-1"
        np.testing.assert_allclose(output(response), [[2, 4, 6, 8]])
        assert ("shunter-model-version", "1") in tuple(await call.trailing_metadata())
        # Naming a version skips the split.
        response = await client.stub.ModelInfer(calc_request(version="3"), metadata=auth(cluster.keys["data"]))
        assert response.model_version == "3"
        np.testing.assert_allclose(output(response), [[3, 6, 9, 12]])
        # Typed contents work as well as raw ones.
        typed = pb.ModelInferRequest(model_name="calc")
        typed.inputs.add(name="IN", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 1, 1, 1])
        response = await client.stub.ModelInfer(typed, metadata=auth(cluster.keys["data"]))
        np.testing.assert_allclose(output(response), [[2, 2, 2, 2]])
        response = await client.stub.ModelInfer(echo_request((b"abc", b"hello")), metadata=auth(cluster.keys["data"]))
        assert output(response, dtype="<i8").ravel().tolist() == [3, 5]


async def test_timeout_parameter_zero_means_no_limit_as_in_triton(cluster: Cluster):
    """tritonclient's ``infer(timeout=0)`` sends ``parameters["timeout"] = 0``: no limit, not 0 µs."""
    async with Client(cluster.routers[0].address) as client:
        for timeout_us in (0, -5, 30_000_000):
            request = calc_request(id_=f"t{timeout_us}")
            request.parameters["timeout"].int64_param = timeout_us
            response = await client.stub.ModelInfer(request, metadata=auth(cluster.keys["data"]))
            assert response.id == f"t{timeout_us}"
            np.testing.assert_allclose(output(response), [[2, 4, 6, 8]])


async def test_metadata_ready_index_and_statistics(cluster: Cluster):
    md = auth(cluster.keys["data"])
    async with Client(cluster.routers[1].address) as client:
        assert (await client.stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await client.stub.ServerReady(pb.ServerReadyRequest())).ready
        meta = await client.stub.ModelMetadata(pb.ModelMetadataRequest(name="calc"), metadata=md)
        assert list(meta.versions) == ["1", "2", "3"] and meta.platform == "python"
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("IN", "FP32", [-1, 4])]
        config = (await client.stub.ModelConfig(pb.ModelConfigRequest(name="echo"), metadata=md)).config
        assert config.max_batch_size == 8 and config.input[0].data_type == pb.TYPE_STRING
        assert (await client.stub.ModelReady(pb.ModelReadyRequest(name="calc", version="2"), metadata=md)).ready
        index = await client.stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=md)
        assert {(m.name, m.version, m.state) for m in index.models} == {
            ("calc", "1", "READY"), ("calc", "2", "READY"), ("calc", "3", "READY"), ("echo", "1", "READY")
        }
        await client.stub.ModelInfer(calc_request(version="2"), metadata=md)
        stats = await client.stub.ModelStatistics(pb.ModelStatisticsRequest(name="calc", version="2"), metadata=md)
        assert [(s.name, s.version) for s in stats.model_stats] == [("calc", "2")]
        assert stats.model_stats[0].inference_count >= 1  # summed over both workers
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), metadata=md)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stream_routes_each_message_and_keeps_ids(cluster: Cluster):
    requests = [calc_request(values=(i, 0, 0, 0), id_=f"c{i}") for i in range(10)]
    requests += [echo_request((b"x" * i,), id_=f"e{i}") for i in range(1, 6)]
    bad = calc_request(id_="bad")
    bad.inputs[0].datatype = "INT32"
    requests.append(bad)

    async def messages():
        for request in requests:
            yield request

    async with Client(cluster.routers[0].address) as client:
        responses = [r async for r in client.stub.ModelStreamInfer(messages(), metadata=auth(cluster.keys["data"]))]
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {r.id for r in requests}
    for i in range(10):
        assert not by_id[f"c{i}"].error_message
        assert output(by_id[f"c{i}"].infer_response)[0, 0] == 2 * i
    for i in range(1, 6):
        assert output(by_id[f"e{i}"].infer_response, dtype="<i8").item() == i
    assert "datatype" in by_id["bad"].error_message
    code = by_id["bad"].infer_response.parameters["shunter_status_code"].int64_param
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_auth_matrix(cluster: Cluster):
    cases = [
        (None, "calc", grpc.StatusCode.UNAUTHENTICATED),
        ("shk_000000000000_not-a-real-key-at-all-x", "calc", grpc.StatusCode.UNAUTHENTICATED),
        (cluster.keys["calc-only"], "echo", grpc.StatusCode.PERMISSION_DENIED),
        (cluster.keys["calc-only"], "calc", grpc.StatusCode.OK),
        (cluster.keys["data"], "echo", grpc.StatusCode.OK),
        (cluster.admin_key, "echo", grpc.StatusCode.OK),
    ]
    async with Client(cluster.routers[0].address) as client:
        for key, model, expected in cases:
            request = calc_request() if model == "calc" else echo_request()
            try:
                await client.stub.ModelInfer(request, metadata=auth(key))
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            assert code == expected, (key, model)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stub.ModelMetadata(pb.ModelMetadataRequest(name="calc"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A revoked key stops working once the routers see the new table.
        revoked = cluster.create_key("to-revoke")
        await client.stub.ModelInfer(calc_request(), metadata=auth(revoked))
        _, revision = cluster.admin(lambda c: c.revoke_api_key(cluster.key_ids["to-revoke"]))
        cluster.wait_routers(revision)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stub.ModelInfer(calc_request(), metadata=auth(revoked))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def malformed_requests() -> list[tuple[str, bytes, grpc.StatusCode, str]]:
    """(case, serialized request, expected code, words the message must contain)."""
    cases: list[tuple[str, object, grpc.StatusCode, str]] = []

    def mutate(fn) -> pb.ModelInferRequest:
        request = calc_request()
        fn(request)
        return request

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases.append(("unknown model", pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND, "nope"))
    cases.append(("unknown version", calc_request(version="9"), grpc.StatusCode.NOT_FOUND, "9"))
    cases.append(("missing input", mutate(lambda r: (r.ClearField("inputs"), r.ClearField("raw_input_contents"))),
                  invalid, "missing"))
    cases.append(("unknown input", mutate(lambda r: setattr(r.inputs[0], "name", "OTHER")), invalid, "OTHER"))

    def duplicate(r):
        r.inputs.add().CopyFrom(r.inputs[0])
        r.raw_input_contents.append(r.raw_input_contents[0])

    cases.append(("duplicate input", mutate(duplicate), invalid, "duplicate"))
    cases.append(("wrong datatype", mutate(lambda r: setattr(r.inputs[0], "datatype", "FP64")), invalid, "datatype"))

    def shape(dims):
        def fn(r):
            del r.inputs[0].shape[:]
            r.inputs[0].shape.extend(dims)
        return fn

    cases.append(("wrong rank", mutate(shape([4])), invalid, "rank"))
    cases.append(("wrong shape", mutate(shape([1, 5])), invalid, "IN"))
    cases.append(("negative dimension", mutate(shape([-1, 4])), invalid, "negative"))
    cases.append(("overflowing shape", mutate(shape([2**40, 2**40])), invalid, "overflow"))
    cases.append(("batch over max", calc_request(rows=9), invalid, "max_batch_size"))
    cases.append(("batch of zero rows", mutate(lambda r: (shape([0, 4])(r), r.raw_input_contents.__setitem__(0, b""))),
                  invalid, "batch"))
    cases.append(("byte length", mutate(lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12)), invalid, "bytes"))
    cases.append(("raw and typed", mutate(lambda r: r.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])),
                  invalid, "both"))
    broken = echo_request()
    broken.raw_input_contents[0] = (100).to_bytes(4, "little") + b"short"
    cases.append(("broken BYTES prefix", broken, invalid, "TEXT"))
    cases.append(("unknown output", mutate(lambda r: r.outputs.add(name="NOPE")), invalid, "NOPE"))
    out = [(name, request.SerializeToString(), code, words) for name, request, code, words in cases]
    out.append(("not a protobuf", b"\xff\xff\xff\xff", invalid, "ModelInferRequest"))
    return out


async def test_malformed_requests_never_reach_a_worker(cluster: Cluster):
    before = worker_infer_calls(cluster)
    key = auth(cluster.keys["data"])
    async with Client(cluster.routers[0].address) as client:
        for name, raw, code, words in malformed_requests():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.raw_infer(raw, metadata=key)
            assert info.value.code() == code, (name, info.value.details())
            assert words.lower() in info.value.details().lower(), (name, info.value.details())
        oversized = calc_request(rows=1)
        oversized.raw_input_contents[0] = b"\0" * (MAX_MESSAGE_BYTES + 1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stub.ModelInfer(oversized, metadata=key)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The router still serves well-formed requests afterwards.
        await client.stub.ModelInfer(calc_request(), metadata=key)
    assert worker_infer_calls(cluster) == before + 1


async def test_cache_hit_is_identical_and_skips_workers(cluster: Cluster):
    cluster.set_policy("calc", {"1": 100}, cache_enabled=True, cache_ttl_s=60)
    try:
        key = auth(cluster.keys["data"])
        unique = (time.time(), 1.5, 2.5, 3.5)
        async with Client(cluster.routers[0].address) as a, Client(cluster.routers[1].address) as b:
            first = pb.ModelInferResponse.FromString(
                await a.raw_infer(calc_request(unique, id_="one").SerializeToString(), metadata=key)
            )
            calls = worker_infer_calls(cluster)
            hits = metric(cluster.routers[1].metrics_url, "shunter_router_cache_total", model="calc", result="hit")
            # The other router, the same inputs sent as typed contents, another id: a hit.
            typed = pb.ModelInferRequest(model_name="calc", id="two")
            typed.inputs.add(name="IN", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(unique)
            second = await b.stub.ModelInfer(typed, metadata=key)
            assert worker_infer_calls(cluster) == calls
            assert metric(cluster.routers[1].metrics_url, "shunter_router_cache_total", model="calc",
                          result="hit") == hits + 1
            assert second.id == "two"
            second.id = "one"
            assert second == first
    finally:
        cluster.set_policy("calc", {"1": 100})


async def _raw_responses(client: Client, key, count: int) -> list[bytes]:
    return [
        await client.raw_infer(calc_request((i, i + 1, 0.5, -i), id_=f"s{i}").SerializeToString(), metadata=key)
        for i in range(count)
    ]


async def test_shadow_leaves_primary_byte_identical_and_counts(cluster: Cluster):
    key = auth(cluster.keys["data"])
    router = cluster.routers[0]

    def shadow(outcome: str, version: str) -> float:
        return metric(router.metrics_url, "shunter_router_shadow_requests_total", model="calc",
                      version=version, outcome=outcome)

    async with Client(router.address) as client:
        baseline = await _raw_responses(client, key, 20)
        cluster.set_policy("calc", {"1": 100}, shadow_version="3")
        try:
            disagree = shadow("disagree", "3")
            assert await _raw_responses(client, key, 20) == baseline
            wait_for(lambda: shadow("disagree", "3") >= disagree + 20, 30, "20 shadow disagreements")
            cluster.set_policy("calc", {"1": 100}, shadow_version="2")
            agree = shadow("agree", "2")
            assert await _raw_responses(client, key, 20) == baseline
            wait_for(lambda: shadow("agree", "2") >= agree + 20, 30, "20 shadow agreements")
        finally:
            cluster.set_policy("calc", {"1": 100})


async def _served_versions(address: str, key: str, users: list[str]) -> dict[str, str]:
    async with Client(address) as client:
        slots = asyncio.Semaphore(32)

        async def one(user: str) -> tuple[str, str]:
            async with slots:
                response = await client.stub.ModelInfer(calc_request(), metadata=auth(key, **{"x-user-id": user}))
                return user, response.model_version

        return dict(await asyncio.gather(*(one(u) for u in users)))


async def test_sticky_split_within_three_points_stable_across_replicas(cluster: Cluster):
    users = [f"user-{i}" for i in range(2000)]
    key = cluster.keys["data"]
    cluster.set_policy("calc", {"1": 90, "2": 10}, sticky_header="x-user-id")
    try:
        on_a = await _served_versions(cluster.routers[0].address, key, users)
        share = 100 * sum(v == "2" for v in on_a.values()) / len(users)
        assert abs(share - 10) <= 3, share
        assert await _served_versions(cluster.routers[1].address, key, users) == on_a
        cluster.set_policy("calc", {"1": 80, "2": 20}, sticky_header="x-user-id")
        raised = await _served_versions(cluster.routers[1].address, key, users)
        assert abs(100 * sum(v == "2" for v in raised.values()) / len(users) - 20) <= 3
        assert all(raised[u] == "2" for u, v in on_a.items() if v == "2")
    finally:
        cluster.set_policy("calc", {"1": 100})


async def test_rate_limit_holds_across_two_routers(cluster: Cluster):
    key = auth(cluster.keys["limited"])  # 50/s, burst 10
    outcomes: list[grpc.StatusCode] = []
    trailers: list[dict] = []

    async def hammer(address: str, stop_at: float) -> None:
        async with Client(address) as client:
            while time.monotonic() < stop_at:
                call = client.stub.ModelInfer(calc_request(), metadata=key)
                try:
                    await call
                    outcomes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as err:
                    outcomes.append(err.code())
                    trailers.append(dict(err.trailing_metadata() or ()))

    start = time.monotonic()
    stop_at = start + 2.0
    await asyncio.gather(*(hammer(r.address, stop_at) for r in cluster.routers for _ in range(4)))
    elapsed = time.monotonic() - start
    admitted = outcomes.count(grpc.StatusCode.OK)
    rejected = outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert admitted + rejected == len(outcomes)
    # GCRA: at most burst + rate × elapsed over any window, whichever router admitted them.
    assert 10 <= admitted <= 10 + 50 * elapsed + 1, (admitted, elapsed)
    assert rejected > 0
    assert all(int(t["retry-after-ms"]) > 0 for t in trailers)


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_tls_is_configuration(cluster: Cluster, certificate):
    cert, key = certificate
    router = start_service(
        ["router", "--registry", cluster.registry.address, "--redis-url", cluster.redis.url, "--port", "0",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        env={"SHUNTER_ADMIN_KEY": cluster.admin_key},
    )
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(router.address, credentials) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            response = await stub.ModelInfer(calc_request(), metadata=auth(cluster.keys["data"]))
            assert response.model_version == "1"
        async with Client(router.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await plain.stub.ModelInfer(calc_request(), metadata=auth(cluster.keys["data"]), timeout=5)
    finally:
        router.terminate()
