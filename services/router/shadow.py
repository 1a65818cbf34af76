"""Shadow traffic: mirror a request to the shadow version and compare the outputs.

Each mirror's outcome (agreement within rtol/atol, the largest absolute difference,
argmax flips for classifier outputs, both latencies, a truncated sample of a disagreement)
goes to ``on_outcome``; the router's ``VersionStats`` adds it to Redis for
``shunter shadow report``.

The mirror runs after the primary response is in hand, as a background task bounded by
a semaphore: when ``max_in_flight`` mirrors are already running the copy is dropped
(and counted), so shadowing never queues behind, delays or fails the primary.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from services.common.datatypes import NUMPY_DTYPES
from services.common.version_windows import SAMPLE_VALUES
from services.router import metrics

logger = logging.getLogger(__name__)


def _outputs(response) -> dict[str, tuple[str, tuple[int, ...], object]]:
    """name → (datatype, shape, values) with raw contents decoded."""
    out = {}
    raw = response.raw_output_contents
    for index, tensor in enumerate(response.outputs):
        shape = tuple(tensor.shape)
        if raw and index < len(raw):
            data = raw[index]
            if tensor.datatype == "BYTES" or tensor.datatype not in NUMPY_DTYPES:
                values: object = bytes(data)
            else:
                values = np.frombuffer(data, dtype=NUMPY_DTYPES[tensor.datatype])
        else:
            values = tensor.contents.SerializeToString()
        out[tensor.name] = (tensor.datatype, shape, values)
    return out


@dataclass(slots=True)
class ShadowOutcome:
    """One mirrored request compared with its primary (what ``shunter shadow report`` sums)."""

    agree: bool
    #: The largest absolute difference over numeric outputs (inf: a missing or reshaped
    #: output; NaN: nothing numeric to compare).
    max_abs_diff: float = math.nan
    #: Rows compared by argmax (outputs whose last dimension has more than one class).
    argmax_rows: int = 0
    argmax_flips: int = 0
    failed: bool = False
    shadow_s: float = 0.0
    primary_s: float = 0.0
    #: A bounded record of a disagreement: truncated outputs of both sides.
    sample: dict | None = None


def _head(values: object) -> list:
    if isinstance(values, np.ndarray):
        return [float(v) if values.dtype.kind == "f" else int(v) for v in values.ravel()[:SAMPLE_VALUES]]
    return [repr(values)[:80]]


def compare_outputs(primary, shadow, *, rtol: float = 1e-3, atol: float = 1e-5) -> ShadowOutcome:
    """Agreement within rtol/atol per output, the largest absolute difference, argmax flips."""
    mine, theirs = _outputs(primary), _outputs(shadow)
    agree = True
    largest = math.nan
    rows = flips = 0
    for name, (datatype, shape, values) in mine.items():
        other = theirs.get(name)
        if other is None or other[0] != datatype or other[1] != shape:
            agree, largest = False, math.inf
            continue
        if isinstance(values, np.ndarray) and isinstance(other[2], np.ndarray):
            if values.shape != other[2].shape:
                agree, largest = False, math.inf
                continue
            a, b = values.astype(np.float64), other[2].astype(np.float64)
            if a.size:
                diff = float(np.nanmax(np.abs(a - b))) if not np.isnan(a - b).all() else 0.0
                largest = diff if math.isnan(largest) else max(largest, diff)
            if not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
                agree = False
            if len(shape) >= 1 and shape[-1] > 1 and a.size and a.size % shape[-1] == 0:
                classes = shape[-1]
                labels_a = a.reshape(-1, classes).argmax(axis=1)
                labels_b = b.reshape(-1, classes).argmax(axis=1)
                rows += len(labels_a)
                flips += int((labels_a != labels_b).sum())
        elif values != other[2]:
            agree = False
    outcome = ShadowOutcome(agree, largest, rows, flips)
    if not agree:
        outcome.sample = {
            "primary": {n: _head(v[2]) for n, v in mine.items()},
            "shadow": {n: _head(v[2]) for n, v in theirs.items()},
            "max_abs_diff": None if math.isnan(largest) or math.isinf(largest) else largest,
        }
    return outcome


def request_heads(raw: bytes) -> dict[str, list]:
    """The first values of each input of a serialised ModelInferRequest (for a sample)."""
    from services.gen.inference import grpc_service_pb2 as pb

    try:
        request = pb.ModelInferRequest.FromString(raw)
    except Exception:
        return {}
    heads = {}
    for index, tensor in enumerate(request.inputs):
        if index < len(request.raw_input_contents) and tensor.datatype in NUMPY_DTYPES:
            data = request.raw_input_contents[index]
            dtype = np.dtype(NUMPY_DTYPES[tensor.datatype])
            heads[tensor.name] = _head(np.frombuffer(data[: dtype.itemsize * SAMPLE_VALUES], dtype=dtype))
        else:
            heads[tensor.name] = ["(not shown)"]
    return heads


def outputs_agree(primary, shadow, *, rtol: float = 1e-3, atol: float = 1e-5) -> bool:
    """True when the shadow response has every primary output, equal or numerically close."""
    return compare_outputs(primary, shadow, rtol=rtol, atol=atol).agree


#: ``on_outcome(model, version, outcome)``: told of every mirror that ran (synchronous).
OutcomeHook = Callable[[str, str, ShadowOutcome], None]


class ShadowMirror:
    def __init__(self, response_cls, max_in_flight: int = 64, on_outcome: OutcomeHook | None = None) -> None:
        self._response_cls = response_cls
        self.on_outcome = on_outcome
        self._slots = max_in_flight
        self._tasks: set[asyncio.Task] = set()

    def mirror(
        self,
        model: str,
        version: str,
        primary_response: bytes,
        send: Callable[[], Awaitable[bytes]],
        primary_s: float = 0.0,
        request: bytes = b"",
    ) -> None:
        """Start comparing ``send()``'s response with the primary; returns at once."""
        if self._slots <= 0:
            metrics.SHADOW.labels(model, version, "dropped").inc()
            return
        self._slots -= 1
        task = asyncio.get_running_loop().create_task(
            self._run(model, version, primary_response, send, primary_s, request)
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots += 1

    async def _run(self, model: str, version: str, primary_response: bytes, send, primary_s: float,
                   request: bytes) -> None:
        started = time.perf_counter()
        try:
            shadow_response = await send()
            shadow_s = time.perf_counter() - started
            outcome = compare_outputs(
                self._response_cls.FromString(primary_response), self._response_cls.FromString(shadow_response)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed mirror is an outcome to count, never the caller's problem
            logger.debug("shadow %s/%s failed: %s", model, version, exc)
            metrics.SHADOW.labels(model, version, "error").inc()
            self._tell(model, version, ShadowOutcome(False, failed=True, primary_s=primary_s))
            return
        outcome.shadow_s, outcome.primary_s = shadow_s, primary_s
        if outcome.sample is not None and request:
            outcome.sample["inputs"] = request_heads(request)
        metrics.SHADOW.labels(model, version, "agree" if outcome.agree else "disagree").inc()
        self._tell(model, version, outcome)

    def _tell(self, model: str, version: str, outcome: ShadowOutcome) -> None:
        if self.on_outcome is not None:
            try:
                self.on_outcome(model, version, outcome)
            except Exception:
                logger.exception("shadow outcome hook failed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
