"""Async client of the registry, used by workers, routers and the CLI.

Typed methods over ``shunter.registry.v1.Registry`` that send the admin key as
``authorization: Bearer <key>`` and raise the ShunterError subclass matching the
server's status (``NotFound``, ``InvalidArgument``, ``Unavailable``, ...) with the
server's message. ``watch()`` follows the routing table for as long as the caller
iterates: it reconnects with jittered exponential backoff (to the next address when
several are given, e.g. ``"reg-a:50051,reg-b:50051"``) and resumes without repeating a
revision it already yielded. Its ``on_state`` hook hears when a stream delivers and when
it breaks, so a caller can report that it serves on a stale table.

The channel reconnects after at most ``MAX_RECONNECT_BACKOFF_MS`` (gRPC's own default
grows to 2 minutes, so after a long registry outage workers came back seconds late), and
pings the registry while a call is open (``KEEPALIVE_TIME_MS``), so a watch to a registry
behind a network partition fails within seconds instead of when the kernel gives up.

After each write, ``last_revision`` holds the registry revision the write created (0 if
it changed nothing routing depends on, e.g. a heartbeat that only renewed the lease).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc

from services.common import background, errors
from services.common.api_keys import auth_metadata
from services.common.tls import ClientTls
from services.common.tls import channel as make_channel
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.registry.v1 import registry_pb2_grpc

logger = logging.getLogger(__name__)

REVISION_METADATA = "x-shunter-revision"
_ERRORS: dict[grpc.StatusCode, type[errors.ShunterError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
}
#: Watch errors worth no retry: the key is wrong and stays wrong.
_FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED)

#: Bounds of gRPC's reconnect backoff on the registry channel.
INITIAL_RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 2_000
#: Keepalive pings while a call is open. Shunter servers accept one every 5 s
#: (server.MIN_CLIENT_PING_INTERVAL_MS); 6 s leaves a margin for timer jitter. A ping
#: unanswered within the timeout fails the call: a lost registry is noticed in about 9 s.
KEEPALIVE_TIME_MS = 6_000
KEEPALIVE_TIMEOUT_MS = 3_000

#: ``on_state(connected, detail)``: True and the address once a stream delivers a table,
#: False and the reason once it breaks.
StateHook = Callable[[bool, str], None]


def channel_options() -> list[tuple[str, int]]:
    """Options of every registry channel (capped reconnect backoff, keepalive)."""
    return [
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def to_shunter_error(exc: grpc.aio.AioRpcError, address: str) -> errors.ShunterError:
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE and not details.startswith("the registry"):
        # A transport failure (the registry's own UNAVAILABLE messages name themselves).
        details = f"cannot reach the registry at {address}: {details}"
    cls = _ERRORS.get(code, errors.ShunterError)
    error = cls(details)
    error.grpc_code = code  # type: ignore[attr-defined]  # kept for callers that print it
    return error


class RegistryClient:
    def __init__(
        self,
        address: str | Sequence[str],
        admin_key: str | None,
        *,
        timeout_s: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        addresses = address.split(",") if isinstance(address, str) else list(address)
        self.addresses = [a.strip() for a in addresses if a.strip()]
        if not self.addresses:
            raise ValueError("no registry address given")
        self.timeout_s = timeout_s
        self.last_revision = 0
        self._metadata = auth_metadata(admin_key) if admin_key else ()
        self._credentials = credentials
        self._tls = tls
        self._index = 0
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    @property
    def address(self) -> str:
        return self.addresses[self._index]

    def _channel(self) -> grpc.aio.Channel:
        """The channel to the current address, opened on first use."""
        address = self.address
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, options=channel_options())
            else:
                channel = make_channel(address, options=channel_options(), tls=self._tls)
            self._channels[address] = channel
        return channel

    def _stub(self) -> registry_pb2_grpc.RegistryStub:
        return registry_pb2_grpc.RegistryStub(self._channel())

    def _rotate(self) -> None:
        self._index = (self._index + 1) % len(self.addresses)

    async def _call(self, method: str, request: Any, *, write: bool = False, stub: Any = None) -> Any:
        """One call of ``method`` on the current replica (``stub``: another service's, on the
        same channel); UNAVAILABLE moves the next call to another replica. ``write``: record
        the revision the registry's trailing metadata names (``last_revision``)."""
        address = self.address
        call = getattr(stub or self._stub(), method)(request, metadata=self._metadata, timeout=self.timeout_s)
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and len(self.addresses) > 1:
                self._rotate()  # the next call tries another replica; this one is not retried
            raise to_shunter_error(exc, address) from None
        if write:
            self.last_revision = 0
            for key, value in await call.trailing_metadata() or ():
                if key == REVISION_METADATA:
                    self.last_revision = int(value)
        return response

    # ---- catalogue -------------------------------------------------------------------

    async def register_model_version(
        self, model: str, version: str | int, artifact_uri: str, sha256: str, config_yaml: str,
        state: int = rpb.STAGED, optimize_report: str = "",
    ) -> rpb.ModelVersion:
        request = rpb.RegisterModelVersionRequest(
            model=model, version=str(version), artifact_uri=artifact_uri, sha256=sha256,
            config_yaml=config_yaml, state=state, optimize_report=optimize_report,  # type: ignore[arg-type]
        )
        return await self._call("RegisterModelVersion", request, write=True)

    async def list_models(self) -> list[rpb.Model]:
        return list((await self._call("ListModels", rpb.ListModelsRequest())).models)

    async def get_model(self, name: str) -> rpb.Model:
        return await self._call("GetModel", rpb.GetModelRequest(name=name))

    async def set_version_state(self, model: str, version: str | int, state: int) -> rpb.ModelVersion:
        request = rpb.SetVersionStateRequest(model=model, version=str(version), state=state)  # type: ignore[arg-type]
        return await self._call("SetVersionState", request, write=True)

    # ---- traffic ---------------------------------------------------------------------

    async def set_traffic_policy(self, policy: rpb.TrafficPolicy) -> rpb.TrafficPolicy:
        return await self._call("SetTrafficPolicy", rpb.SetTrafficPolicyRequest(policy=policy), write=True)

    async def set_weights(self, model: str, weights: dict[str, int], **fields: Any) -> rpb.TrafficPolicy:
        """Replace a model's policy: ``weights`` plus any TrafficPolicy field by name."""
        policy = rpb.TrafficPolicy(model=model, weights={str(k): int(v) for k, v in weights.items()}, **fields)
        return await self.set_traffic_policy(policy)

    async def get_traffic_policy(self, model: str) -> rpb.TrafficPolicy:
        return await self._call("GetTrafficPolicy", rpb.GetTrafficPolicyRequest(model=model))

    # ---- workers ---------------------------------------------------------------------

    async def register_worker(
        self, address: str, versions: Iterable[rpb.VersionStatus] = (), *, ttl_s: int = 0, worker_id: str = ""
    ) -> rpb.WorkerLease:
        request = rpb.RegisterWorkerRequest(address=address, versions=list(versions), ttl_s=ttl_s,
                                            worker_id=worker_id)
        return await self._call("RegisterWorker", request, write=True)

    async def heartbeat(self, worker_id: str, versions: Iterable[rpb.VersionStatus] = ()) -> rpb.WorkerLease:
        """Renew a lease; raises NotFound once it has expired (then register again)."""
        request = rpb.HeartbeatRequest(worker_id=worker_id, versions=list(versions))
        return await self._call("Heartbeat", request, write=True)

    async def deregister_worker(self, worker_id: str) -> None:
        await self._call("DeregisterWorker", rpb.DeregisterWorkerRequest(worker_id=worker_id), write=True)

    async def list_workers(self) -> list[rpb.Worker]:
        return list((await self._call("ListWorkers", rpb.ListWorkersRequest())).workers)

    # ---- API keys --------------------------------------------------------------------

    async def create_api_key(
        self, tenant: str, models: Iterable[str] = (), *, rate: rpb.RateLimit | None = None, admin: bool = False,
        role: str = "",
    ) -> rpb.CreateApiKeyResponse:
        """Create a key; the response's ``secret`` is the whole key, shown only this once.

        ``role`` is one of ``api_keys.ROLES``; "" means admin when ``admin`` is set, else client.
        """
        request = rpb.CreateApiKeyRequest(tenant=tenant, models=list(models), rate=rate, admin=admin, role=role)
        return await self._call("CreateApiKey", request, write=True)

    async def list_api_keys(self) -> list[rpb.ApiKey]:
        return list((await self._call("ListApiKeys", rpb.ListApiKeysRequest())).keys)

    async def revoke_api_key(self, key_id: str) -> rpb.ApiKey:
        return await self._call("RevokeApiKey", rpb.RevokeApiKeyRequest(key_id=key_id), write=True)

    # ---- the routing table -----------------------------------------------------------

    async def watch(
        self, *, min_backoff_s: float = 0.1, max_backoff_s: float = 5.0, on_state: StateHook | None = None
    ) -> AsyncIterator[rpb.RoutingTable]:
        """Yield the routing table now and after every change, reconnecting forever.

        Raises ``Unauthenticated``/``PermissionDenied`` (the key will not get better);
        every other failure is logged and retried with jittered backoff capped at
        ``max_backoff_s``. A revision is never yielded twice; a lower one (Redis lost its
        data and every registry restarted) is yielded with a warning, for the caller to judge.
        """
        last: int | None = None
        backoff = min_backoff_s
        failures = 0
        while True:
            address = self.address
            call = self._stub().WatchRoutingTable(rpb.WatchRoutingTableRequest(), metadata=self._metadata)
            connected = False
            reason = "stream ended"
            try:
                async for table in call:
                    backoff, failures = min_backoff_s, 0
                    if not connected:
                        connected = True
                        if on_state is not None:
                            on_state(True, address)
                    if last is not None and table.revision == last:
                        continue
                    if last is not None and table.revision < last:
                        logger.warning("registry revision went back from %s to %s at %s",
                                       last, table.revision, address)
                    last = table.revision
                    yield table
                logger.info("registry watch stream at %s ended; reconnecting", address)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _FATAL:
                    raise to_shunter_error(exc, address) from None
                background.raise_if_cancelled()  # never retry past a cancel (see background)
                failures += 1
                reason = f"{exc.code().name}: {exc.details()}"
                log = logger.warning if failures in (1, 10) or failures % 100 == 0 else logger.debug
                log("registry watch at %s failed (%s); retrying", address, reason)
            finally:
                call.cancel()
            if on_state is not None:
                on_state(False, f"{address}: {reason}")
            if len(self.addresses) > 1:
                self._rotate()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, max_backoff_s)
