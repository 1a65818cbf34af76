"""A Seldon MLServer runtime that serves the report's ONNX models (for the peer comparison).

Runs inside the MLServer peer's virtual environment; servers.py (launch_mlserver) writes a
settings.json and one model-settings.json per model whose ``implementation`` is
``mlserver_runtime.OrtRuntime`` and whose ``parameters.extra`` is the model's spec (the
same one Triton gets), with adaptive batching set from Shunter's config
(``max_batch_size``, ``max_batch_time`` = ``max_queue_delay_us``). The model runs inside
``predict`` as MLServer's own runtimes (mlserver-sklearn, mlserver-xgboost) run theirs:
on the event loop of whichever process serves it (the main one with
``parallel_workers: 0``, an inference-pool worker process otherwise).

BYTES inputs are read item by item: MLServer's NumpyCodec sizes byte strings by the last
dimension of the shape, which is wrong for variable-length text.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ort_model import OrtModel


def decode(request_input: RequestInput) -> np.ndarray:
    if request_input.datatype == "BYTES":
        data = getattr(request_input.data, "root", request_input.data)
        items = np.empty(len(data), dtype=object)
        items[:] = [item if isinstance(item, bytes) else str(item).encode() for item in data]
        return items.reshape(request_input.shape)
    return NumpyCodec.decode_input(request_input)


class OrtRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra if self.settings.parameters else None
        if not extra:
            raise ValueError(f"model {self.name}: parameters.extra must hold the model spec")
        self._model = OrtModel(extra)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {request_input.name: decode(request_input) for request_input in payload.inputs}
        outputs = self._model.infer(inputs)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in outputs.items()],
        )
