"""Who may call a worker: routers and admins in cluster mode, anyone in open mode.

A worker in cluster mode serves ``inference.GRPCInferenceService`` (inference, metadata,
statistics) only to calls carrying ``authorization: Bearer <key>`` with a key of role
router or admin from the routing table's key table, which the worker already follows; a
revoked key stops working with the next table. No key, or one the table does not hold,
is UNAUTHENTICATED; a client or worker key is PERMISSION_DENIED naming its role and the
method. Health and reflection stay open (probes and grpcurl need them).

The check runs once per call (once per stream for ModelStreamInfer) before the edge sees
it: ``InferenceGuard.wrap`` puts it in front of the servicer's generic handler, the way
gRPC's own auth interceptors answer a refused call with a pre-built aborting handler.

Open mode (a standalone worker with ``--model-repository``, or ``--open-inference``)
serves anyone who reaches the port, and says so with a WARNING at start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import grpc
from prometheus_client import Counter

from services.common import api_keys
from services.gen.shunter.registry.v1 import registry_pb2 as rpb

logger = logging.getLogger(__name__)

REFUSED = Counter(
    "shunter_worker_refused_calls",
    "Calls to the worker's inference service refused for their credential, by reason.",
    ["reason"],
)

_INFERENCE_PREFIX = "/inference.GRPCInferenceService/"
#: Least seconds between two log lines about refused calls (per status code): a caller
#: retrying with a bad key must not flood the log, but a misconfigured router must show.
LOG_INTERVAL_S = 10.0


def _deny(code: grpc.StatusCode, message: str):
    async def deny(request, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return deny


def _refusal(inner: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of ``inner``'s kind that aborts at once (the request is never parsed)."""
    deny = _deny(code, message)
    if inner.request_streaming and inner.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if inner.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if inner.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class InferenceGuard:
    """The key check in front of a worker's inference service (see the module docstring)."""

    def __init__(self, open_mode: bool) -> None:
        self.open_mode = open_mode
        #: sha256 hex of each active key → (key id, role); None until the first table.
        self._keys: dict[str, tuple[str, str]] | None = None
        self._logged: dict[grpc.StatusCode, float] = {}
        self._left_out: dict[grpc.StatusCode, int] = {}

    def update(self, keys: Iterable[rpb.ApiKey]) -> None:
        """Take the key table of a routing table the worker accepted."""
        self._keys = {
            k.secret_sha256.lower(): (k.key_id, api_keys.role_of(k)) for k in keys if not k.revoked and k.secret_sha256
        }

    def refusal(self, method: str, metadata: object) -> tuple[grpc.StatusCode, str] | None:
        """Why a call to ``method`` with ``metadata`` is refused, or None if it may proceed."""
        if self.open_mode:
            return None
        name = method.rsplit("/", 1)[-1]
        token = api_keys.bearer_token(metadata)
        if token is None:
            REFUSED.labels("missing").inc()
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"this worker serves {name} to routers and admins only: send 'authorization: Bearer <key>' "
                    "with a router or admin key")
        keys = self._keys
        if keys is None:
            REFUSED.labels("no_table").inc()
            return grpc.StatusCode.UNAVAILABLE, "the worker has no key table from the registry yet; try another worker"
        found = keys.get(api_keys.key_hash(token))
        if found is None:
            REFUSED.labels("invalid").inc()
            return grpc.StatusCode.UNAUTHENTICATED, "invalid or revoked API key"
        key_id, role = found
        if role not in api_keys.INFERENCE_CALLERS:
            REFUSED.labels("role").inc()
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"key {key_id} has role {role}, which may not call {name} on a worker "
                    "(workers serve routers and admins; send client requests to a router)")
        return None

    def log_refusal(self, code: grpc.StatusCode, message: str) -> None:
        """A warning per status code at most every LOG_INTERVAL_S, saying how many were left out."""
        now = time.monotonic()
        last = self._logged.get(code)
        if last is not None and now - last < LOG_INTERVAL_S:
            self._left_out[code] = self._left_out.get(code, 0) + 1
            return
        self._logged[code] = now
        more = self._left_out.pop(code, 0)
        logger.warning("refused a call to the inference service: %s %s%s", code.name, message,
                       f" ({more} more since the last such line)" if more else "")

    def wrap(self, handler: grpc.GenericRpcHandler) -> grpc.GenericRpcHandler:
        """``handler`` with every inference-service call checked first."""
        return _Guarded(self, handler)

    def log_mode(self, address: str) -> None:
        if self.open_mode:
            logger.warning(
                "OPEN MODE: this worker serves inference to ANY caller that reaches %s, with no key. "
                "Fine on a laptop; in a cluster run it with --registry (routers' and admins' keys only) "
                "and bind it where only routers can reach it.", address or "its port",
            )
        else:
            logger.info("worker inference is served only to router and admin keys of the registry's key table")


class _Guarded(grpc.GenericRpcHandler):
    def __init__(self, guard: InferenceGuard, inner: grpc.GenericRpcHandler) -> None:
        self._guard = guard
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_INFERENCE_PREFIX):
            return handler
        refused = self._guard.refusal(method, handler_call_details.invocation_metadata)
        if refused is None:
            return handler
        self._guard.log_refusal(*refused)
        return _refusal(handler, *refused)
