"""The unmodified tritonclient against a real worker: infer, metadata, config,
statistics and streaming, with outputs equal to the same model run in-process."""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.models import build_examples
from tests.support.processes import start_service


@pytest.fixture(scope="module")
def worker():
    repo = build_examples()
    service = start_service(["worker", "--model-repository", str(repo), "--port", "0"])
    yield service
    assert service.terminate() == 0, service.logs()


@pytest.fixture(scope="module")
def client(worker):
    with grpcclient.InferenceServerClient(worker.address) as client:
        yield client


def digits_samples(rows: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:rows].astype(np.float32)


def in_process_digits(version: str, x: np.ndarray) -> np.ndarray:
    """The same artifact run directly with its own runtime, no Shunter code involved."""
    repo = build_examples()
    if version == "1":
        import torch

        module = torch.jit.load(str(repo / "digits" / "1" / "model.pt"))
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / "digits" / "2" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_server_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "shunter"
    meta = client.get_model_metadata("digits")
    assert {"1", "2"} <= set(meta.versions)
    assert meta.inputs[0].name == "input__0"
    config = client.get_model_config("digits", "1").config
    assert config.max_batch_size == 64
    assert config.input[0].dims == [64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000


@pytest.mark.parametrize("version", ["1", "2"])
def test_infer_matches_the_model_run_in_process(client, version):
    x = digits_samples(5)
    inp = grpcclient.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    requested = [grpcclient.InferRequestedOutput("output__0")]
    result = client.infer("digits", [inp], model_version=version, outputs=requested)
    served = result.as_numpy("output__0")
    np.testing.assert_allclose(served, in_process_digits(version, x), rtol=1e-5, atol=1e-6)
    assert result.get_response().model_version == version


def test_minilm_embeds_sentences(client):
    text = np.array([["the cat sat"], ["a dog ran"], ["the cat sat"]], dtype=object)
    inp = grpcclient.InferInput("TEXT", [3, 1], "BYTES")
    inp.set_data_from_numpy(text)
    embedding = client.infer("minilm", [inp]).as_numpy("EMBEDDING")
    assert embedding.shape == (3, 384)
    np.testing.assert_allclose(embedding[0], embedding[2], atol=1e-5)
    assert float(embedding[0] @ embedding[1]) < 0.99


def test_errors_carry_the_status_and_a_message(client):
    inp = grpcclient.InferInput("input__0", [1, 63], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [inp])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input__0" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [inp])
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_show_batching_under_concurrent_load(client, worker):
    x = digits_samples(1)
    before = client.get_inference_statistics("digits", "2").model_stats[0]

    def one(_):
        with grpcclient.InferenceServerClient(worker.address) as own:
            inp = grpcclient.InferInput("input__0", [1, 64], "FP32")
            inp.set_data_from_numpy(x)
            for _ in range(10):
                own.infer("digits", [inp], model_version="2")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(16)))
    after = client.get_inference_statistics("digits", "2").model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 160
    assert 0 < executions < inferences
    assert after.inference_stats.success.count - before.inference_stats.success.count == 160


def test_stream_infer_returns_every_response_with_its_id(client):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        x = digits_samples(4)
        for i in range(4):
            inp = grpcclient.InferInput("input__0", [1, 64], "FP32")
            inp.set_data_from_numpy(x[i : i + 1])
            client.async_stream_infer("digits", [inp], request_id=f"req-{i}", model_version="1")
        bad = grpcclient.InferInput("input__0", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        client.async_stream_infer("digits", [bad], request_id="bad")
        got = {}
        errors = []
        for _ in range(5):
            result, error = responses.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result.as_numpy("output__0")
    finally:
        client.stop_stream()
    assert sorted(got) == ["req-0", "req-1", "req-2", "req-3"]
    expected = in_process_digits("1", x)
    for i in range(4):
        np.testing.assert_allclose(got[f"req-{i}"][0], expected[i], rtol=1e-5, atol=1e-6)
    assert len(errors) == 1 and "input__0" in str(errors[0])
