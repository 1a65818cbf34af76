"""An Open Inference Protocol client for jobs: describe a model, infer named arrays, retry.

One ``grpc.aio`` channel to a router or a worker. Requests carry raw little-endian contents
(BYTES length-prefixed), responses are decoded from raw contents. Failures come out as three
kinds of exception, because a job treats them differently:

- ``RowsRejected``: the rows themselves are at fault (INVALID_ARGUMENT, an oversized message,
  an engine error on this batch); the job records them and goes on.
- ``JobFailed``: nothing will get better by retrying (bad key, unknown model, retries spent);
  the job stops with what it has committed.
- transient codes never escape: they are retried here under a ``RetryPolicy``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import numpy as np

from services.common.api_keys import auth_metadata
from services.common.datatypes import CONTENTS_FIELD, NUMPY_DTYPES
from services.common.errors import InvalidArgument
from services.common.signature import Signature, TensorSpec
from services.common.tensors import parse_bytes_tensor, serialize_bytes_tensor
from services.common.tls import ClientTls
from services.common.tls import channel as tls_channel
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from services.jobs.retry import TRANSIENT_CODES, RetryPolicy, retry_after_s

logger = logging.getLogger(__name__)

CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    # Retries are ours (with the codes and waits above), not the channel's.
    ("grpc.enable_retries", 0),
)
#: Codes that say the rows are at fault: recorded per row, the job goes on.
ROW_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.OUT_OF_RANGE})


class JobFailed(Exception):
    """The job cannot go on (bad target, key, model; retries spent); the message says why."""


@dataclass
class RowsRejected(Exception):
    """The server refused these rows; ``code`` and ``message`` are what it said."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def describe_rpc_error(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


class InferClient:
    """Infers batches of rows for one model (and optionally one version) at ``target``."""

    def __init__(
        self,
        target: str,
        model: str,
        *,
        version: str = "",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        policy: RetryPolicy | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.target = target
        self.model = model
        self.version = version
        self.timeout_s = timeout_s
        self.policy = policy or RetryPolicy()
        self._metadata = auth_metadata(api_key) if api_key else ()
        self._channel = tls_channel(target, options=CHANNEL_OPTIONS, tls=tls)  # TLS with --tls-ca
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self.signature: Signature | None = None
        #: Transient failures retried and rate-limit waits taken, for the summary.
        self.retries = 0
        self.rate_limited = 0
        self._rng = random.Random()

    async def __aenter__(self) -> InferClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def describe(self, connect_timeout_s: float = 10.0) -> Signature:
        """The model's signature from ModelMetadata and ModelConfig (batch dimension, shapes)."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), connect_timeout_s)
        except TimeoutError:
            raise JobFailed(f"cannot connect to {self.target} within {connect_timeout_s:g} s") from None
        try:
            meta = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.model, version=self.version),
                metadata=self._metadata,
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise JobFailed(f"model '{self.model}' at {self.target}: {describe_rpc_error(exc)}") from None
        config = None
        try:
            reply = await self._stub.ModelConfig(
                pb.ModelConfigRequest(name=self.model, version=self.version),
                metadata=self._metadata,
                timeout=self.timeout_s,
            )
            config = reply.config if reply.config.input else None
        except grpc.aio.AioRpcError as exc:
            logger.debug("ModelConfig unavailable (%s); taking a leading -1 as the batch dimension", exc.code())
        self.signature = signature_from(meta, config)
        return self.signature

    async def infer(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Infer one request; transient failures are retried, rate limits waited out."""
        assert self.signature is not None, "describe() first"
        request = build_request(self.model, self.version, self.signature, arrays)
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = await self._stub.ModelInfer(request, metadata=self._metadata, timeout=self.timeout_s)
                return decode_response(reply)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    wait = retry_after_s(exc.trailing_metadata())
                    if wait is None:  # no hint: an oversized message, not a rate limit
                        raise RowsRejected(code.name, exc.details() or "") from None
                    self.rate_limited += 1
                    attempt -= 1  # waiting out a rate limit spends no retry
                    await asyncio.sleep(min(wait, self.policy.max_retry_after_s))
                    continue
                if code in TRANSIENT_CODES:
                    if attempt >= self.policy.max_attempts:
                        raise JobFailed(
                            f"{describe_rpc_error(exc)} (gave up after {attempt} tries at {self.target})"
                        ) from None
                    self.retries += 1
                    await asyncio.sleep(self.policy.backoff_s(attempt, self._rng))
                    continue
                if code in ROW_CODES:
                    raise RowsRejected(code.name, exc.details() or "") from None
                raise JobFailed(f"model '{self.model}' at {self.target}: {describe_rpc_error(exc)}") from None


def signature_from(meta: pb.ModelMetadataResponse, config: pb.ModelConfig | None) -> Signature:
    """A Signature from metadata datatypes and, when the server gives one, the config's dims."""
    if config is not None:
        dims = {t.name: tuple(t.dims) for t in config.input}
        out_dims = {t.name: tuple(t.dims) for t in config.output}
        max_batch = config.max_batch_size
    else:
        dims, out_dims = {}, {}
        batched = all(t.shape and t.shape[0] == -1 for t in meta.inputs)
        max_batch = (1 << 30) if batched else 0
    skip = 1 if max_batch > 0 else 0

    def spec(tensor, known: dict[str, tuple[int, ...]]) -> TensorSpec:
        shape = known.get(tensor.name, tuple(tensor.shape)[skip:])
        return TensorSpec(name=tensor.name, datatype=tensor.datatype, shape=tuple(shape))

    return Signature(
        inputs=tuple(spec(t, dims) for t in meta.inputs),
        outputs=tuple(spec(t, out_dims) for t in meta.outputs),
        max_batch_size=max_batch,
    )


def build_request(
    model: str, version: str, signature: Signature, arrays: Mapping[str, np.ndarray]
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for spec in signature.inputs:
        array = arrays[spec.name]
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(array.shape))
        if spec.datatype == "BYTES":
            request.raw_input_contents.append(serialize_bytes_tensor(array))
        else:
            want = NUMPY_DTYPES[spec.datatype]
            request.raw_input_contents.append(np.ascontiguousarray(array, dtype=want).tobytes())
    return request


def decode_response(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Output name → array, from raw contents (typed contents when a server sends those)."""
    out: dict[str, np.ndarray] = {}
    raw = reply.raw_output_contents
    for index, tensor in enumerate(reply.outputs):
        shape = tuple(tensor.shape)
        count = int(np.prod(shape)) if shape else 1
        if raw:
            if tensor.datatype == "BYTES":
                try:
                    out[tensor.name] = parse_bytes_tensor(raw[index], count, tensor.name).reshape(shape)
                except InvalidArgument as exc:
                    raise RowsRejected("INTERNAL", f"undecodable response: {exc.message}") from None
            else:
                out[tensor.name] = np.frombuffer(raw[index], dtype=NUMPY_DTYPES[tensor.datatype]).reshape(shape)
        else:
            values = list(getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype]))
            dtype = NUMPY_DTYPES[tensor.datatype]
            out[tensor.name] = np.array(values, dtype=dtype).reshape(shape)
    return out
