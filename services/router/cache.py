"""Response cache in Redis, per the model's traffic policy (``cache_enabled``, ``cache_ttl_s``),
with an in-process copy of recent entries in front of it (near_cache.py).

The key is (model, version, sha256 of the canonical inputs). Canonical means the same
tensors hash the same however they were sent: inputs sorted by name, each as name,
datatype, shape and little-endian bytes (typed ``contents`` are converted to the raw
layout; BYTES items are length-prefixed as on the wire), then the requested outputs and
all parameters in sorted order, since they can change the response. The request id is
not part of the key: a cached response is stored without an id and a hit gets the
caller's id.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from services.common import wire
from services.common.datatypes import NUMPY_DTYPES
from services.common.tensors import DecodedRequest, serialize_bytes_tensor
from services.router import metrics
from services.router.near_cache import NearCache
from services.router.redis_link import OUTAGE_ERRORS, RedisLink

logger = logging.getLogger(__name__)


def _parameter_items(parameters) -> list[tuple[str, str]]:
    items = []
    for name in sorted(parameters):
        value = parameters[name]
        choice = value.WhichOneof("parameter_choice")
        items.append((name, f"{choice}={getattr(value, choice) if choice else ''}"))
    return items


def canonical_digest(request, decoded: DecodedRequest) -> str:
    """sha256 hex of a validated request's inputs, outputs and parameters."""
    h = hashlib.sha256()
    raw = request.raw_input_contents
    order = sorted(range(len(request.inputs)), key=lambda i: request.inputs[i].name)
    for index in order:
        tensor = request.inputs[index]
        h.update(b"I%s\0%s\0%s\0" % (tensor.name.encode(), tensor.datatype.encode(),
                                    ",".join(map(str, tensor.shape)).encode()))
        if raw:
            data = raw[index]
        else:
            array = decoded.inputs[tensor.name]
            if tensor.datatype == "BYTES":
                data = serialize_bytes_tensor(array)
            else:
                data = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
        for name, value in _parameter_items(tensor.parameters):
            h.update(b"p%s\0%s\0" % (name.encode(), value.encode()))
    for output in sorted(request.outputs, key=lambda o: o.name):
        h.update(b"O%s\0" % output.name.encode())
        for name, value in _parameter_items(output.parameters):
            h.update(b"p%s\0%s\0" % (name.encode(), value.encode()))
    for name, value in _parameter_items(request.parameters):
        h.update(b"P%s\0%s\0" % (name.encode(), value.encode()))
    return h.hexdigest()


def strip_id(response_bytes: bytes) -> bytes:
    """The ModelInferResponse without its id (stored once, served to any caller).

    Edited on the bytes, as the stream link does (wire.find_id): no parse and re-serialise
    of the output tensors.
    """
    _id, start, stop = wire.find_id(response_bytes)
    if start == stop:
        return response_bytes
    return wire.replace_id(response_bytes, start, stop, "")


class ResponseCache:
    def __init__(self, link: RedisLink, prefix: str = "shunter:", near_bytes: int = 0) -> None:
        self._link = link
        self._prefix = f"{prefix}cache:"
        self.near = NearCache(near_bytes)

    def key(self, model: str, version: str, digest: str) -> str:
        return f"{self._prefix}{model}:{version}:{digest}"

    async def get(self, model: str, key: str, request_id: str, ttl_s: int) -> bytes | None:
        """The cached response (with the caller's id) or None on a miss or outage.

        The near copy is asked first; a Redis hit is copied there for at most ``ttl_s``.
        """
        if self._link.client is None:  # no Redis configured: no cache at all, near copy included
            metrics.CACHE.labels(model, "bypass").inc()
            return None
        found = self.near.get(key) if self.near.enabled else None
        if found is not None:
            metrics.CACHE.labels(model, "hit").inc()
            return wire.with_id(found, request_id) if request_id else found
        client = self._link.client
        if not self._link.available():
            metrics.CACHE.labels(model, "bypass").inc()
            return None
        try:
            found = await client.get(key)
        except OUTAGE_ERRORS as exc:
            self._link.failed(exc)
            metrics.CACHE.labels(model, "bypass").inc()
            return None
        self._link.succeeded()
        if found is None:
            metrics.CACHE.labels(model, "miss").inc()
            return None
        metrics.CACHE.labels(model, "hit").inc()
        if self.near.enabled:
            self.near.put(key, found, min(ttl_s, self.near.max_age_s))
        return wire.with_id(found, request_id) if request_id else found

    async def put(self, key: str, response_without_id: bytes, ttl_s: int) -> None:
        if self.near.enabled and self._link.client is not None:
            self.near.put(key, response_without_id, ttl_s)
        client = self._link.client
        if client is None or not self._link.available():
            return
        try:
            await client.set(key, response_without_id, ex=max(1, ttl_s))
        except OUTAGE_ERRORS as exc:
            self._link.failed(exc)
