"""A small digits client for the monitoring tests."""

from __future__ import annotations

import grpc
import numpy as np

from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc


class DigitsClient:
    """Generated OIP stubs (not tritonclient: its `inference` protos cannot share a process
    with ours, scripts/test) sending rows of digits to a worker, version 2."""

    def __init__(self, address: str, key: str | None = None) -> None:
        #: Cluster workers serve inference to router and admin keys only.
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def infer(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        request = pb.ModelInferRequest(model_name="digits", model_version="2")
        request.inputs.add(name="input__0", datatype="FP32", shape=list(rows.shape))
        request.raw_input_contents.append(rows.tobytes())
        response = self._stub.ModelInfer(request, timeout=30, metadata=self._metadata)
        return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(list(response.outputs[0].shape))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DigitsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
