"""ONNX Runtime engine: one InferenceSession per instance.

Thread counts come from the config and apply to this session only (unlike torch's).
Tensors are matched by name: the config's input names must be the graph's input names.
At load the graph's declared element types and fixed dimensions are checked against the
config, so a mismatched config fails to load instead of failing every request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from services.common.errors import EngineError
from services.common.model_config import TensorConfig
from services.worker.engines._support import (
    as_dtype,
    batch_rows,
    collect_outputs,
    cuda_index,
    fallback_to_cpu,
    require_file,
    run_warmup,
    warmup_inputs,
)
from services.worker.engines.base import EngineLoadError, EngineSpec

logger = logging.getLogger(__name__)

#: ONNX Runtime's element type names -> NumPy dtypes (those it can exchange with NumPy).
_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}


class OnnxEngine:
    def __init__(self, spec: EngineSpec, inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig]):
        self.spec = spec
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._batched = spec.config.max_batch_size > 0
        self._session: ort.InferenceSession | None = None
        #: The dtype the graph wants for each input (requests arrive in the config's).
        self._feed_dtypes: dict[str, np.dtype] = {}
        self._what = f"ONNX model {spec.model}/{spec.version}"

    def load(self) -> None:
        config = self.spec.config
        path = require_file(self.spec.artifact_path, "artifact")
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), options, providers=self._providers())
        except Exception as exc:
            raise EngineLoadError(f"{path}: cannot load ONNX model: {exc}") from exc
        self._check_signature(path)
        logger.info("loaded %s from %s with %s", self._what, path, self._session.get_providers()[0])

    def warmup(self) -> None:
        run_warmup(self.infer, warmup_inputs(self._inputs, self.spec.config.max_batch_size), self._what)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise EngineError(f"{self._what} is not loaded")
        rows = batch_rows(inputs, self._batched)
        feed: dict[str, np.ndarray] = {}
        for spec in self._inputs:
            if spec.name not in inputs:
                raise EngineError(f"{self._what} is missing input '{spec.name}'")
            feed[spec.name] = _to_feed(as_dtype(inputs[spec.name], spec), self._feed_dtypes[spec.name])
        names = [spec.name for spec in self._outputs]
        results = self._session.run(names, feed)
        return collect_outputs(dict(zip(names, results, strict=True)), self._outputs, rows, self._what)

    def close(self) -> None:
        self._session = None

    def _providers(self) -> list[str | tuple[str, dict[str, str]]]:
        device = self.spec.config.device
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                return [
                    ("CUDAExecutionProvider", {"device_id": str(cuda_index(device))}),
                    "CPUExecutionProvider",
                ]
            fallback_to_cpu(device, self._what)
        return ["CPUExecutionProvider"]

    def _check_signature(self, path: object) -> None:
        assert self._session is not None
        problems: list[str] = []
        graph_inputs = {arg.name: arg for arg in self._session.get_inputs()}
        graph_outputs = {arg.name: arg for arg in self._session.get_outputs()}
        for group, specs, graph in (("input", self._inputs, graph_inputs), ("output", self._outputs, graph_outputs)):
            for spec in specs:
                arg = graph.get(spec.name)
                if arg is None:
                    problems.append(f"config {group} '{spec.name}' is not a graph {group} (graph has {sorted(graph)})")
                    continue
                problems.extend(self._shape_problems(group, spec, arg))
                if group == "input":
                    dtype = _ORT_DTYPES.get(arg.type)
                    if dtype is None:
                        problems.append(f"graph input '{spec.name}' has unsupported type {arg.type}")
                    else:
                        self._feed_dtypes[spec.name] = dtype
        unfed = sorted(set(graph_inputs) - {spec.name for spec in self._inputs})
        if unfed:
            problems.append(f"graph input(s) {', '.join(unfed)} are not in the config")
        if problems:
            self._session = None
            raise EngineLoadError(f"{path}: config does not match the graph: " + "; ".join(problems))

    def _shape_problems(self, group: str, spec: TensorConfig, arg: ort.NodeArg) -> list[str]:
        """Fixed graph dimensions must equal the config's (a config -1 accepts anything)."""
        graph_shape = list(arg.shape) if arg.shape is not None else None
        if graph_shape is None:
            return []
        expected = [-1, *spec.shape] if self._batched else list(spec.shape)
        if len(graph_shape) != len(expected):
            return [
                f"{group} '{spec.name}' has rank {len(graph_shape)} in the graph but the config implies "
                f"{len(expected)} ({'batch + ' if self._batched else ''}{spec.shape})"
            ]
        for graph_dim, config_dim in zip(graph_shape, expected, strict=True):
            if isinstance(graph_dim, int) and config_dim != -1 and graph_dim != config_dim:
                return [f"{group} '{spec.name}' has shape {graph_shape} in the graph, config says {spec.shape}"]
        return []


def _to_feed(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "O":
        # ONNX strings are text: decode the BYTES items the protocol carries.
        return np.vectorize(_as_text, otypes=[object])(array)
    return array if array.dtype == dtype else array.astype(dtype)


def _as_text(item: object) -> str:
    return item.decode() if isinstance(item, bytes) else str(item)
