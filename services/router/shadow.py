"""Shadow traffic: mirror a request to the shadow version and compare the outputs.

The mirror runs after the primary response is in hand, as a background task bounded by
a semaphore: when ``max_in_flight`` mirrors are already running the copy is dropped
(and counted), so shadowing never queues behind, delays or fails the primary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from services.common.datatypes import NUMPY_DTYPES
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


def outputs_agree(primary, shadow, *, rtol: float = 1e-3, atol: float = 1e-5) -> bool:
    """True when the shadow response has every primary output, equal or numerically close."""
    mine, theirs = _outputs(primary), _outputs(shadow)
    for name, (datatype, shape, values) in mine.items():
        other = theirs.get(name)
        if other is None or other[0] != datatype or other[1] != shape:
            return False
        if isinstance(values, np.ndarray) and isinstance(other[2], np.ndarray):
            if values.shape != other[2].shape or not np.allclose(
                values.astype(np.float64), other[2].astype(np.float64), rtol=rtol, atol=atol, equal_nan=True
            ):
                return False
        elif values != other[2]:
            return False
    return True


class ShadowMirror:
    def __init__(self, response_cls, max_in_flight: int = 64) -> None:
        self._response_cls = response_cls
        self._slots = max_in_flight
        self._tasks: set[asyncio.Task] = set()

    def mirror(
        self,
        model: str,
        version: str,
        primary_response: bytes,
        send: Callable[[], Awaitable[bytes]],
    ) -> None:
        """Start comparing ``send()``'s response with the primary; returns at once."""
        if self._slots <= 0:
            metrics.SHADOW.labels(model, version, "dropped").inc()
            return
        self._slots -= 1
        task = asyncio.get_running_loop().create_task(self._run(model, version, primary_response, send))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots += 1

    async def _run(self, model: str, version: str, primary_response: bytes, send) -> None:
        try:
            shadow_response = await send()
            agree = outputs_agree(
                self._response_cls.FromString(primary_response), self._response_cls.FromString(shadow_response)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed mirror is an outcome to count, never the caller's problem
            logger.debug("shadow %s/%s failed: %s", model, version, exc)
            metrics.SHADOW.labels(model, version, "error").inc()
            return
        metrics.SHADOW.labels(model, version, "agree" if agree else "disagree").inc()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
