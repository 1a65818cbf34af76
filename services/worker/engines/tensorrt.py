"""TensorRT engine (TensorRT 10 API), for workers that have it installed.

The artifact is either a serialized plan (``model.plan``, built for this GPU and TensorRT
version) or an ONNX file, which is built into a plan at load time with one optimisation
profile matching the batcher: batch 1 to ``max_batch_size``, tuned for the largest
preferred batch size. Variable non-batch dimensions get the range
``1..VARIABLE_DIM_MAX`` tuned for ``VARIABLE_DIM_OPT``. Device memory, the stream and the
host/device copies go through torch (always present on GPU workers); host buffers are
pinned and reused from batch to batch by torch_support.PinnedStager, as in the torch engines.

This module imports without TensorRT; ``load()`` raises EngineLoadError when it is missing.
It has not been exercised on a GPU in CI: treat it as the reference shape of the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.errors import EngineError
from services.common.model_config import TensorConfig
from services.worker.engines._support import (
    as_dtype,
    batch_rows,
    collect_outputs,
    cuda_index,
    require_file,
    run_warmup,
    warmup_inputs,
)
from services.worker.engines.base import EngineLoadError, EngineSpec, UnsafeArtifact

logger = logging.getLogger(__name__)

VARIABLE_DIM_OPT = 128
VARIABLE_DIM_MAX = 512


class TensorRTEngine:
    def __init__(self, spec: EngineSpec, inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig]):
        self.spec = spec
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._batched = spec.config.max_batch_size > 0
        self._what = f"TensorRT engine {spec.model}/{spec.version}"
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._device: Any = None
        self._stager: Any = None  # torch_support.PinnedStager, once loaded

    def load(self) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise EngineLoadError("TensorRT is not installed") from None
        import torch

        from services.worker.engines.torch_support import PinnedStager

        if not torch.cuda.is_available():
            raise EngineLoadError(f"{self._what}: TensorRT needs a CUDA device and none is available")
        path = require_file(self.spec.artifact_path, "artifact")
        self._device = torch.device("cuda", cuda_index(self.spec.config.device))
        trt_logger = trt.Logger(trt.Logger.WARNING)
        try:
            with torch.cuda.device(self._device):
                plan = path.read_bytes() if path.suffix != ".onnx" else self._build_plan(trt, trt_logger, path)
                runtime = trt.Runtime(trt_logger)
                if hasattr(runtime, "engine_host_code_allowed"):
                    # A version-compatible plan may embed host code (a lean runtime, plugins);
                    # refuse to run it. TensorRT's default, stated so it stays that way.
                    runtime.engine_host_code_allowed = False
                self._engine = runtime.deserialize_cuda_engine(plan)
                if self._engine is None:
                    raise EngineLoadError(f"{path}: not a TensorRT plan for this GPU and TensorRT version")
                self._context = self._engine.create_execution_context()
                self._stream = torch.cuda.Stream(self._device)
                self._stager = PinnedStager(self._device)
        except EngineLoadError:
            raise
        except Exception as exc:
            raise EngineLoadError(f"{path}: cannot load TensorRT engine: {exc}") from exc
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        missing = sorted({t.name for t in (*self._inputs, *self._outputs)} - names)
        if missing:
            raise EngineLoadError(f"{path}: tensors {missing} are not in the engine (it has {sorted(names)})")
        logger.info("loaded %s from %s on %s", self._what, path, self._device)

    def _build_plan(self, trt: Any, trt_logger: Any, onnx_path: Any) -> bytes:
        config = self.spec.config
        model_bytes = onnx_path.read_bytes()
        external = external_data_locations(model_bytes)
        if external:
            # The parser would resolve these itself, with no check that they stay in the model's
            # directory (ONNX Runtime has one); a single-file model or a plan avoids the question.
            raise UnsafeArtifact(
                f"{onnx_path}: refusing ONNX external data ({', '.join(external[:3])}) for a TensorRT build; "
                "save the model as one file or register a plan"
            )
        builder = trt.Builder(trt_logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse(model_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineLoadError(f"{onnx_path}: TensorRT cannot parse the ONNX model: {errors}")
        build_config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        preferred = config.dynamic_batching.preferred_batch_sizes if config.dynamic_batching else []
        opt_batch = max(preferred, default=config.max_batch_size)
        for spec in self._inputs:
            low = [1 if d == -1 else d for d in spec.shape]
            opt = [VARIABLE_DIM_OPT if d == -1 else d for d in spec.shape]
            high = [VARIABLE_DIM_MAX if d == -1 else d for d in spec.shape]
            if self._batched:
                low, opt, high = [1, *low], [opt_batch, *opt], [config.max_batch_size, *high]
            profile.set_shape(spec.name, low, opt, high)
        build_config.add_optimization_profile(profile)
        logger.info("%s: building a plan from %s (this takes a while)", self._what, onnx_path)
        serialized = builder.build_serialized_network(network, build_config)
        if serialized is None:
            raise EngineLoadError(f"{onnx_path}: TensorRT failed to build an engine")
        return bytes(serialized)

    def warmup(self) -> None:
        run_warmup(self.infer, warmup_inputs(self._inputs, self.spec.config.max_batch_size), self._what)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from services.worker.engines.torch_support import tensor_to_numpy

        if self._context is None:
            raise EngineError(f"{self._what} is not loaded")
        rows = batch_rows(inputs, self._batched)
        keep_alive: list[torch.Tensor] = []
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            for spec in self._inputs:
                if spec.name not in inputs:
                    raise EngineError(f"{self._what} is missing input '{spec.name}'")
                host = torch.from_numpy(np.ascontiguousarray(as_dtype(inputs[spec.name], spec)).copy())
                device_tensor = self._stager.to_device(spec.name, host)
                keep_alive.append(device_tensor)
                self._context.set_input_shape(spec.name, tuple(device_tensor.shape))
                self._context.set_tensor_address(spec.name, device_tensor.data_ptr())
            outputs: dict[str, torch.Tensor] = {}
            for spec in self._outputs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                dtype = _torch_dtype(self._engine.get_tensor_dtype(spec.name))
                outputs[spec.name] = torch.empty(shape, dtype=dtype, device=self._device)
                self._context.set_tensor_address(spec.name, outputs[spec.name].data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"{self._what}: execution failed")
            host_outputs = {name: tensor.to("cpu", non_blocking=True) for name, tensor in outputs.items()}
        self._stream.synchronize()
        raw = {name: tensor_to_numpy(tensor) for name, tensor in host_outputs.items()}
        return collect_outputs(raw, self._outputs, rows, self._what)

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._stream = None
        if self._stager is not None:
            self._stager.clear()
        self._stager = None


def external_data_locations(model_bytes: bytes) -> list[str]:
    """The external-data file names an ONNX model refers to (empty for a self-contained one)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors  # every initializer, graph and attribute

    try:
        model = onnx.ModelProto.FromString(model_bytes)  # parsing only: reads no external file
    except Exception as exc:
        raise EngineLoadError(f"not an ONNX model: {exc}") from None
    locations = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {item.key: item.value for item in tensor.external_data}
            locations.append(entry.get("location", "?"))
    return locations


def _torch_dtype(trt_dtype: Any) -> Any:
    import tensorrt as trt
    import torch

    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int8: torch.int8,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
        trt.uint8: torch.uint8,
    }[trt_dtype]
