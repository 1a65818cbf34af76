"""Generated-stub helpers for talking to routers and workers in tests."""

from __future__ import annotations

import grpc
import numpy as np

from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc


def auth(key: str | None, **extra: str) -> tuple[tuple[str, str], ...]:
    pairs = [("authorization", f"Bearer {key}")] if key else []
    return tuple(pairs + list(extra.items()))


def calc_request(values=(1.0, 2.0, 3.0, 4.0), rows: int = 1, version: str = "", id_: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="calc", model_version=version, id=id_)
    request.inputs.add(name="IN", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(np.tile(np.asarray(values, "<f4"), (rows, 1)).tobytes())
    return request


def echo_request(texts=(b"hello",), id_: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo", id=id_)
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts), 1])
    request.raw_input_contents.append(b"".join(len(t).to_bytes(4, "little") + t for t in texts))
    return request


def output(response: pb.ModelInferResponse, index: int = 0, dtype: str = "<f4") -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(tuple(response.outputs[index].shape))


class Client:
    """An aio channel to one service, with the stub and a raw-bytes ModelInfer."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_send_message_length", 16 << 20), ("grpc.enable_retries", 0)]
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.raw_infer = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
