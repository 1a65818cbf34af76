"""Helpers every engine shares: dtypes, warm-up batches, output checks, device choice.

Kept free of torch and onnxruntime so that importing it costs nothing; the backend
modules import their heavy library themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from services.common.datatypes import NUMPY_DTYPES
from services.common.errors import EngineError
from services.common.model_config import TensorConfig
from services.worker.engines.base import EngineLoadError

logger = logging.getLogger(__name__)

#: Length given to a variable (-1) dimension in the warm-up batch: long enough to look
#: like a short sentence, small enough to cost nothing.
WARMUP_VARIABLE_DIM = 8
#: What a BYTES element of the warm-up batch holds.
WARMUP_BYTES = b"warmup"


def warmup_rows(max_batch_size: int) -> int:
    """Rows in the warm-up batch: two where the model batches (so batched kernels run), else one."""
    return max(1, min(max_batch_size, 2))


def warmup_inputs(specs: Sequence[TensorConfig], max_batch_size: int) -> dict[str, np.ndarray]:
    """A batch of zeros (or ``b"warmup"`` strings) shaped like ``specs``."""
    batch: dict[str, np.ndarray] = {}
    for spec in specs:
        dims = [WARMUP_VARIABLE_DIM if d == -1 else d for d in spec.shape]
        if max_batch_size > 0:
            dims = [warmup_rows(max_batch_size), *dims]
        if spec.datatype == "BYTES":
            array = np.empty(dims, dtype=object)
            array.fill(WARMUP_BYTES)
        else:
            array = np.zeros(dims, dtype=NUMPY_DTYPES[spec.datatype])
        batch[spec.name] = array
    return batch


def batch_rows(inputs: Mapping[str, np.ndarray], batched: bool) -> int | None:
    """The batch's row count (every input must agree), or None for an unbatched model."""
    if not batched:
        return None
    rows = {name: array.shape[0] if array.ndim else -1 for name, array in inputs.items()}
    counts = set(rows.values())
    if len(counts) != 1 or -1 in counts:
        raise EngineError(f"inputs disagree on the batch size: {rows}")
    return counts.pop()


def as_dtype(array: np.ndarray, spec: TensorConfig) -> np.ndarray:
    """``array`` in the spec's NumPy dtype, copied only when it has to be."""
    dtype = NUMPY_DTYPES[spec.datatype]
    if array.dtype == dtype:
        return array
    if spec.datatype == "BYTES":
        return array.astype(object)
    return array.astype(dtype)


def collect_outputs(
    raw: Mapping[str, np.ndarray],
    specs: Sequence[TensorConfig],
    rows: int | None,
    where: str,
) -> dict[str, np.ndarray]:
    """Pick the configured outputs out of ``raw``, cast them, and check their row count.

    ``where`` names the producer (engine or handler) in errors, which are EngineError:
    the batch fails, the engine stays usable.
    """
    if not isinstance(raw, Mapping):
        raise EngineError(f"{where} returned {type(raw).__name__}, expected a dict of arrays")
    outputs: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in raw:
            raise EngineError(f"{where} produced no output '{spec.name}' (got {sorted(raw)})")
        array = as_dtype(np.asarray(raw[spec.name]), spec)
        if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
            shape = list(array.shape)
            raise EngineError(f"{where} output '{spec.name}' has shape {shape}, expected {rows} rows first")
        outputs[spec.name] = array
    return outputs


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise EngineLoadError(f"{what} not found: {path}")
    return path


def cuda_index(device: str) -> int:
    """The CUDA ordinal named by ``cuda`` / ``cuda:N`` (``cuda`` means 0)."""
    return int(device.partition(":")[2] or 0)


def fallback_to_cpu(device: str, what: str) -> str:
    """Log and return ``cpu`` when ``device`` asks for CUDA that this process lacks.

    A version configured for a GPU still serves (slowly) on a CPU-only worker rather than
    refusing to load; the log line says why it is slow.
    """
    logger.warning("%s: device %s requested but CUDA is not available; running on cpu", what, device)
    return "cpu"


def run_warmup(
    infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    batch: dict[str, np.ndarray],
    what: str,
) -> None:
    """Run the warm-up batch; a model that cannot run it cannot serve, so that is a load error."""
    try:
        infer(batch)
    except Exception as exc:
        raise EngineLoadError(f"{what}: warm-up batch failed: {exc}") from exc
