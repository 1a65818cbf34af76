"""Payload logging: a sample of requests and responses, appended to a Redis stream.

``--payload-log redis-stream://HOST:PORT/DB/STREAM --payload-sample 0.01`` makes a router
keep about 1 % of its answered requests as stream entries (XADD, trimmed with
``MAXLEN ~``): input for offline analysis and for recomputing drift. Each entry holds

- ``ts_ms`` (when the router answered), ``model``, ``version``, ``latency_us`` (at the
  router), ``trace_id`` ("" when the request was not traced);
- ``request`` and ``response``: the serialised ModelInferRequest and ModelInferResponse,
  exactly as they crossed the router (so any datatype survives); ``decode`` turns an
  entry back into named NumPy inputs and outputs.

The request path never waits on Redis: ``offer`` puts the record in a bounded queue (or
drops it, counted, when the queue is full) and one background task writes batches with a
pipeline. When Redis is slow or down a batch fails after the timeout and is dropped and
counted; the writer then pauses ``retry_after_s`` while new records overflow the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import Counter

from services.common.datatypes import CONTENTS_FIELD, NUMPY_DTYPES
from services.common.tensors import parse_bytes_tensor
from services.gen.inference import grpc_service_pb2 as pb

logger = logging.getLogger(__name__)

SCHEME = "redis-stream"
#: The stream URL schemes and the Redis URL scheme each maps to (services.common.redis_connect).
SCHEMES = {"redis-stream": "redis", "rediss-stream": "rediss"}
#: Records written to Redis in one pipeline.
BATCH_RECORDS = 128

RECORDS = Counter(
    "shunter_router_payload_log_records",
    "Sampled request/response records by outcome: written to the stream, or dropped because the "
    "queue was full (Redis slow or down) or the write failed.",
    ["outcome"],
)
_WRITTEN = RECORDS.labels("written")
_QUEUE_FULL = RECORDS.labels("queue_full")
_WRITE_FAILED = RECORDS.labels("write_failed")


class PayloadLogConfigError(ValueError):
    """A ``--payload-log`` target or sampling setting that cannot work."""


@dataclass(frozen=True, slots=True)
class StreamTarget:
    #: The Redis server, as a ``redis://`` / ``rediss://`` URL for redis_connect (may hold a password).
    redis_url: str
    stream: str

    @property
    def display(self) -> str:
        from services.common.redis_connect import redacted

        return f"{redacted(self.redis_url)} stream {self.stream}"


def parse_target(url: str) -> StreamTarget:
    """``redis-stream://[USER:PASSWORD@]HOST[:PORT]/DB/STREAM`` as a StreamTarget.

    ``rediss-stream://`` is the same over TLS, with redis_connect's ``?ca=&cert=&key=``
    options; USER:PASSWORD are a Redis ACL user's, as in every ``--redis-url``.
    """
    from services.common.redis_connect import RedisUrlError, parse_url

    expected = f"expected {SCHEME}://[USER:PASSWORD@]HOST:PORT/DB/STREAM"
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise PayloadLogConfigError(f"payload log {_redacted(url)!r}: {expected}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise PayloadLogConfigError(f"payload log {_redacted(url)!r}: the port is not a number; {expected}") from None
    path = parts.path.strip("/").split("/", 1)
    if not parts.hostname or len(path) != 2 or not path[0].isdigit() or not path[1]:
        raise PayloadLogConfigError(f"payload log {_redacted(url)!r}: {expected}")
    query = f"?{parts.query}" if parts.query else ""
    redis_url = f"{SCHEMES[parts.scheme]}://{parts.netloc}/{path[0]}{query}"
    try:
        parse_url(redis_url)
    except RedisUrlError as exc:
        raise PayloadLogConfigError(f"payload log {_redacted(url)!r}: {exc}") from None
    return StreamTarget(redis_url, path[1])


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class PayloadLog:
    """A sampled, bounded, never-blocking writer of request/response records to one stream."""

    def __init__(
        self,
        target: StreamTarget,
        sample: float,
        *,
        maxlen: int = 100_000,
        queue_size: int = 1024,
        timeout_s: float = 1.0,
        retry_after_s: float = 1.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 < sample <= 1.0:
            raise PayloadLogConfigError(f"payload sample {sample}: expected a fraction above 0, at most 1")
        if maxlen < 1 or queue_size < 1:
            raise PayloadLogConfigError("payload log maxlen and queue size must be at least 1")
        self.target = target
        self.sample = sample
        self.maxlen = maxlen
        self._rng = rng
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._task: asyncio.Task | None = None
        self._redis: Any = None
        self._failing = False
        self.written = 0
        self.dropped = 0

    def offer(
        self, model: str, version: str, request: bytes, response: bytes, latency_s: float, trace_id: str = ""
    ) -> None:
        """Keep this request with probability ``sample``; returns at once whatever Redis does."""
        if self.sample < 1.0 and self._rng() >= self.sample:
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_all(), name="payload-log")
        record = {
            "ts_ms": int(time.time() * 1000),
            "model": model,
            "version": version,
            "latency_us": int(latency_s * 1e6),
            "trace_id": trace_id,
            "request": request,
            "response": response,
        }
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            _QUEUE_FULL.inc()

    def _client(self) -> Any:
        if self._redis is None:
            from services.common.redis_connect import connect

            self._redis = connect(
                self.target.redis_url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
        return self._redis

    async def _write_all(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH_RECORDS and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RedisError, OSError, timeouts: Redis is slow or down
                self.dropped += len(batch)
                _WRITE_FAILED.inc(len(batch))
                self._done(len(batch))
                if not self._failing:
                    logger.warning("payload log %s: writing failed (%s); dropping records until Redis answers",
                                   self.target.display, exc)
                self._failing = True
                await asyncio.sleep(self._retry_after_s)
                continue
            if self._failing:
                logger.info("payload log %s: writing again", self.target.display)
                self._failing = False
            self.written += len(batch)
            _WRITTEN.inc(len(batch))
            self._done(len(batch))

    def _done(self, count: int) -> None:
        for _ in range(count):
            self._queue.task_done()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        pipe = self._client().pipeline(transaction=False)
        for record in batch:
            pipe.xadd(self.target.stream, record, maxlen=self.maxlen, approximate=True)
        await asyncio.wait_for(pipe.execute(), self._timeout_s)

    async def close(self, flush_s: float = 2.0) -> None:
        """Write what is queued (for up to ``flush_s``), then stop."""
        if self._task is not None:
            if not self._failing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queue.join(), flush_s)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()


# -- reading the stream back -------------------------------------------------------------


def _tensors(tensors: Any, raw: Any) -> dict[str, np.ndarray]:
    arrays = {}
    for index, tensor in enumerate(tensors):
        shape = tuple(tensor.shape)
        count = int(np.prod(shape)) if shape else 1
        if index < len(raw):
            if tensor.datatype == "BYTES":
                array = parse_bytes_tensor(raw[index], count, tensor.name)
            else:
                array = np.frombuffer(raw[index], dtype=NUMPY_DTYPES[tensor.datatype])
        else:
            values = list(getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype]))
            array = np.array(values, dtype=NUMPY_DTYPES[tensor.datatype])
        arrays[tensor.name] = array.reshape(shape)
    return arrays


def decode(fields: Mapping[bytes | str, bytes]) -> dict[str, Any]:
    """A stream entry's fields (as redis-py returns them) as plain values and NumPy arrays."""
    get = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}.__getitem__
    request = pb.ModelInferRequest.FromString(get("request"))
    response = pb.ModelInferResponse.FromString(get("response"))
    return {
        "ts_ms": int(get("ts_ms")),
        "model": get("model").decode(),
        "version": get("version").decode(),
        "latency_us": int(get("latency_us")),
        "trace_id": get("trace_id").decode(),
        "id": request.id,
        "inputs": _tensors(request.inputs, request.raw_input_contents),
        "outputs": _tensors(response.outputs, response.raw_output_contents),
    }
