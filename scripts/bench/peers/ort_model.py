"""One ONNX model as both peers serve it: an ONNX Runtime session plus the model's handler.

This file runs inside the peers' own virtual environments (Triton's and MLServer's), so it
imports nothing from Shunter: only NumPy, ONNX Runtime and, for models with a handler,
what the handler imports (``tokenizers`` for minilm). It reproduces what Shunter's ONNX
engine does with the same config: the same graph file, ``intra_op_num_threads`` and
``inter_op_num_threads`` from the spec (1 and 1 unless the config says otherwise), full
graph optimisation, the CPU provider, and the same ``preprocess``/``postprocess`` handler
module around the session (loaded once per instance, as Shunter's worker does, so module
globals are per instance).

A spec is one entry of the JSON file the runner writes (servers.py, ``model_specs``).
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

#: Handlers are imported under a fresh module name per instance so instances share nothing.
_instance_ids = itertools.count()


class OrtModel:
    """``infer(named arrays) -> named arrays`` for one instance of one model."""

    def __init__(self, spec: dict[str, Any]):
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(spec.get("intra_op_threads", 1))
        options.inter_op_num_threads = int(spec.get("inter_op_threads", 1))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])
        self.feed_dtypes = {arg.name: _ORT_DTYPES.get(arg.type) for arg in self.session.get_inputs()}
        self.output_names = [arg.name for arg in self.session.get_outputs()]
        self.handler = _load_handler(spec["handler"]) if spec.get("handler") else None

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self.handler.preprocess(inputs) if self.handler else inputs
        feed = {
            name: array if self.feed_dtypes.get(name) in (None, array.dtype) else array.astype(self.feed_dtypes[name])
            for name, array in feed.items()
            if name in self.feed_dtypes
        }
        results = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
        return self.handler.postprocess(results, feed) if self.handler else results


def _load_handler(path: str) -> Any:
    file = Path(path)
    name = f"_peer_handler_{next(_instance_ids)}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot import handler {file}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so dataclasses and typing inside the handler can find it
    module_spec.loader.exec_module(module)
    if hasattr(module, "load"):
        module.load(file.parent)
    return module
