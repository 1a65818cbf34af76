"""BYTES inputs whose shape claims more items than the body holds: INVALID_ARGUMENT, no allocation.

A standalone worker serves a python model with a variable-length BYTES input; requests of
a few bytes claim up to 2^40 items. The worker must answer INVALID_ARGUMENT, keep its
peak memory where it was, and go on serving.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common.tensors import serialize_bytes_tensor
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.processes import start_service

MODEL = """
import numpy as np


def infer(inputs):
    return {"COUNT": np.array([[len(row)] for row in inputs["TEXT"]], dtype=np.int32)}
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    model_dir = repo / "texts"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.yaml").write_text(textwrap.dedent("""
        backend: python
        max_batch_size: 4
        inputs: [{name: TEXT, datatype: BYTES, shape: [-1]}]
        outputs: [{name: COUNT, datatype: INT32, shape: [1]}]
        handler: model.py
    """))
    (model_dir / "model.py").write_text(MODEL)
    service = start_service(["worker", "--model-repository", str(repo), "--port", "0"])
    yield service
    service.terminate()


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def claim(items: int, body: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="texts")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, items])
    request.raw_input_contents.append(body)
    return request


async def test_claimed_bytes_items_beyond_the_body_are_invalid(worker) -> None:
    body = b"\x03\x00\x00\x00abc" * 5  # 35 bytes
    before = peak_rss_kib(worker.proc.pid)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for items in (2**26, 2**26, 2**40):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(claim(items, body))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert f"shape claims {items} BYTES items but the 35-byte body" in info.value.details()
        good = claim(2, serialize_bytes_tensor(np.array([b"ab", b"cde"], dtype=object)))
        response = await stub.ModelInfer(good)
    assert np.frombuffer(response.raw_output_contents[0], dtype=np.int32).tolist() == [2]
    # Each claim of 2^26 items would have been a 512 MB object array.
    grown_mib = (peak_rss_kib(worker.proc.pid) - before) / 1024
    assert grown_mib < 256, f"the worker's peak memory grew by {grown_mib:.0f} MiB"
