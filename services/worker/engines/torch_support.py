"""Torch plumbing every torch engine shares: the module runner, pinned staging, conversions.

``TorchEngineBase`` loads a torch callable (a subclass says how) and runs batches of NumPy
arrays through it in inference mode; TorchScript (torchscript.py) and torch.export
(torch_export.py) are two ``_load_module``s over it. ``PinnedStager`` is the host side of
the GPU path, used by these and by TensorRT (tensorrt.py): one reusable pinned buffer per
input, and an asynchronous copy to the device on the caller's stream. ``tensor_to_numpy``
is the way back (bfloat16 included, which NumPy lacks).

Threads: ``torch.set_num_threads`` is process-wide, so when several torch versions share a
worker the one loaded last sets the intra-op pool for all of them (ONNX Runtime's
settings, by contrast, are per session). Torch's inter-op pool only serves TorchScript
``fork``/``wait`` and can be sized once per process before first use, so it is left
alone.

Tensors are passed positionally: in the order of the module's own argument names when
the config's input names are exactly those names, otherwise in config order (Triton's
``INPUT__0``, ``INPUT__1`` convention). A module may return one tensor, a tuple/list
(named by config output order) or a dict keyed by output name.

On CUDA each instance owns a stream and a PinnedStager, so host-to-device copies are
asynchronous and never allocate pinned memory on the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common.datatypes import NUMPY_DTYPES
from services.common.errors import EngineError
from services.common.model_config import TensorConfig
from services.worker.engines._support import (
    as_dtype,
    batch_rows,
    collect_outputs,
    fallback_to_cpu,
    require_file,
    run_warmup,
    warmup_inputs,
)
from services.worker.engines.base import EngineLoadError, EngineSpec

logger = logging.getLogger(__name__)


class PinnedStager:
    """Reusable pinned host buffers (one per tensor name) and the async copy to ``device``.

    A buffer grows when a larger batch arrives and is kept for the next; the copy is
    ``non_blocking``, so it runs on whatever CUDA stream is current.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def to_device(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        nbytes = tensor.numel() * tensor.element_size()
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
            self._buffers[name] = buffer
        staged = buffer[:nbytes].view(tensor.dtype).view(tensor.shape)
        staged.copy_(tensor)
        return staged.to(self.device, non_blocking=True)

    def clear(self) -> None:
        self._buffers.clear()


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU NumPy array of ``tensor`` (bfloat16 as the BF16 NumPy dtype)."""
    tensor = tensor.detach().to("cpu")
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(NUMPY_DTYPES["BF16"])
    return tensor.numpy()


class TorchEngineBase:
    """Load a torch module, then run batches of NumPy arrays through it in inference mode."""

    #: Human name of the artifact format, for error messages.
    kind = "torch module"

    def __init__(self, spec: EngineSpec, inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig]):
        self.spec = spec
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._batched = spec.config.max_batch_size > 0
        self._module: Callable[..., Any] | None = None
        self._order: list[TensorConfig] = []
        self._device = torch.device("cpu")
        self._stream: torch.cuda.Stream | None = None
        self._stager: PinnedStager | None = None

    # -- what a subclass provides -------------------------------------------------------

    def _load_module(self, path: Path, device: torch.device) -> tuple[Callable[..., Any], list[str]]:
        """Return the callable module on ``device`` and its argument names, in order."""
        raise NotImplementedError

    # -- Engine ---------------------------------------------------------------------------

    def load(self) -> None:
        config = self.spec.config
        path = require_file(self.spec.artifact_path, "artifact")
        bytes_tensors = [t.name for t in (*self._inputs, *self._outputs) if t.datatype == "BYTES"]
        if bytes_tensors:
            raise EngineLoadError(
                f"{self.kind} cannot take BYTES tensors ({', '.join(bytes_tensors)}); "
                "use a handler to turn them into numbers"
            )
        device = config.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = fallback_to_cpu(device, f"{self.spec.model}/{self.spec.version}")
        self._device = torch.device(device)
        if config.intra_op_threads > 0:
            torch.set_num_threads(config.intra_op_threads)
        try:
            module, arg_names = self._load_module(path, self._device)
        except EngineLoadError:
            raise
        except Exception as exc:
            raise EngineLoadError(f"{path}: cannot load {self.kind}: {exc}") from exc
        self._order = self._argument_order(arg_names, path)
        if self._device.type == "cuda":
            self._stream = torch.cuda.Stream(self._device)
            self._stager = PinnedStager(self._device)
        self._module = module
        logger.info("loaded %s %s/%s from %s on %s", self.kind, self.spec.model, self.spec.version, path, self._device)

    def warmup(self) -> None:
        batch = warmup_inputs(self._inputs, self.spec.config.max_batch_size)
        run_warmup(self.infer, batch, f"{self.spec.model}/{self.spec.version}")

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._module is None:
            raise EngineError(f"{self.spec.model}/{self.spec.version} is not loaded")
        rows = batch_rows(inputs, self._batched)
        missing = [t.name for t in self._order if t.name not in inputs]
        if missing:
            raise EngineError(f"{self.kind} is missing input(s) {', '.join(missing)}")
        with torch.inference_mode():
            if self._stream is not None and self._stager is not None:
                stager = self._stager
                with torch.cuda.stream(self._stream):
                    args = [stager.to_device(t.name, self._to_torch(inputs[t.name], t)) for t in self._order]
                    result = self._module(*args)
                    raw = self._name_outputs(result)
                self._stream.synchronize()
            else:
                args = [self._to_torch(inputs[t.name], t) for t in self._order]
                raw = self._name_outputs(self._module(*args))
        return collect_outputs(raw, self._outputs, rows, f"{self.kind} {self.spec.model}/{self.spec.version}")

    def close(self) -> None:
        self._module = None
        if self._stager is not None:
            self._stager.clear()
        self._stager = None
        self._stream = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    # -- internals ----------------------------------------------------------------------

    def _argument_order(self, arg_names: list[str], path: Path) -> list[TensorConfig]:
        by_name = {t.name: t for t in self._inputs}
        if set(arg_names) == set(by_name):
            return [by_name[name] for name in arg_names]
        if len(self._inputs) > len(arg_names):
            raise EngineLoadError(
                f"{path}: the config names {len(self._inputs)} input(s) but the module takes "
                f"{len(arg_names)} ({', '.join(arg_names)})"
            )
        logger.info(
            "%s: module arguments %s differ from config inputs %s; passing them in config order",
            path,
            arg_names,
            list(by_name),
        )
        return list(self._inputs)

    @staticmethod
    def _to_torch(array: np.ndarray, spec: TensorConfig) -> torch.Tensor:
        array = np.ascontiguousarray(as_dtype(array, spec))
        if not array.flags.writeable:
            # torch.from_numpy warns on read-only memory (request buffers are); copying
            # one batch is cheap next to running the model on it.
            array = array.copy()
        if spec.datatype == "BF16":
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)

    def _name_outputs(self, result: Any) -> dict[str, np.ndarray]:
        if isinstance(result, torch.Tensor):
            if len(self._outputs) != 1:
                raise EngineError(f"{self.kind} returned one tensor but the config names {len(self._outputs)} outputs")
            named = {self._outputs[0].name: result}
        elif isinstance(result, dict):
            named = result
        elif isinstance(result, (tuple, list)):
            if len(result) < len(self._outputs):
                raise EngineError(
                    f"{self.kind} returned {len(result)} tensors but the config names {len(self._outputs)}"
                )
            named = {spec.name: value for spec, value in zip(self._outputs, result, strict=False)}
        else:
            raise EngineError(f"{self.kind} returned {type(result).__name__}, expected tensors")
        return {name: tensor_to_numpy(value) for name, value in named.items() if isinstance(value, torch.Tensor)}
