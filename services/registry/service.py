"""The ``shunter.registry.v1.Registry`` servicer: auth, validation, then the store.

Every RPC needs a key (``authorization: Bearer <key>``): none or an unknown or revoked
key is UNAUTHENTICATED; a key whose role may not call the method (``api_keys.allowed``:
workers register, heartbeat and watch, routers watch and read, only admins write the
catalogue, policies and keys) is PERMISSION_DENIED naming the role and method. Keys are checked
against Redis when it answers (so a revocation holds at once on every replica) and
against the last snapshot when it does not. Each write answers with the revision it
created in the ``x-shunter-revision`` trailing metadata.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from services.common import api_keys, edge, tracing
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry import metrics, validation
from services.registry.rollout import records
from services.registry.store import REDIS_DOWN, RedisStore, now_ms

logger = logging.getLogger(__name__)

REVISION_METADATA = "x-shunter-revision"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext, rpb.ApiKey], Awaitable[Any]]


def admin_rpc(fn: Handler) -> Callable[..., Awaitable[Any]]:
    """Authorise the caller for this method (by its key's role), then label the call by its model (statuses and
    metrics are the edge's, services.common.edge). Labels come after authentication, so
    an unauthenticated caller's strings never become metric labels."""

    method = fn.__name__

    @functools.wraps(fn)
    async def authorised(self: RegistryService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.draining:
            raise Unavailable("the registry is shutting down; try another replica")
        caller = await self.authorise(context, method)
        model = getattr(request, "model", "") or getattr(request, "name", "")
        if not model and isinstance(request, rpb.SetTrafficPolicyRequest):
            model = request.policy.model
        if isinstance(model, str) and validation.NAME_RE.match(model):
            version = getattr(request, "version", "")
            edge.label(model, version if isinstance(version, str) and version.isdigit() else "")
        return await fn(self, request, context, caller)

    return authorised


class RegistryService:
    def __init__(
        self, store: RedisStore, *, default_ttl_s: int, bootstrap: rpb.ApiKey | None,
        artifact_roots: tuple[Path, ...] = (),
    ) -> None:
        self.store = store
        self.artifact_roots = artifact_roots
        self.keys = store.keys
        self.default_ttl_s = default_ttl_s
        self.bootstrap = bootstrap
        self.draining = False
        self._drained = asyncio.Event()
        # Heartbeats and the long-lived watch streams would be most of the traces and tell nothing.
        self.edge = edge.Edge("registry", tracing.interceptors("registry", ("Heartbeat", "WatchRoutingTable")))
        self.rollout_keys = records.RolloutKeys(store.keys)

    def handler(self) -> grpc.GenericRpcHandler:
        service = rpb.DESCRIPTOR.services_by_name["Registry"]
        return self.edge.handler(service.full_name, edge.generated_methods(service, self))

    def drain(self) -> None:
        self.draining = True
        self._drained.set()

    # ---- auth ------------------------------------------------------------------------

    async def authorise(self, context: grpc.aio.ServicerContext, method: str) -> rpb.ApiKey:
        """The caller's key, if its role may call ``method``; else UNAUTHENTICATED or PERMISSION_DENIED."""
        token = api_keys.context_token(context)
        if token is None:
            metrics.AUTH_FAILURES.labels("missing").inc()
            raise Unauthenticated("missing `authorization: Bearer <key>` metadata")
        digest = api_keys.key_hash(token)
        key = None
        looked_up = False
        if self.store.redis_up:
            try:
                key = await self.store.lookup_key(digest)
                looked_up = True
            except REDIS_DOWN as exc:
                self.store.unavailable(exc)
        if not looked_up and self.store.catalogue is not None:
            key = self.store.catalogue.keys_by_hash.get(digest)
        if key is None and self.bootstrap is not None and digest == self.bootstrap.secret_sha256:
            key = self.bootstrap
        if key is None or key.revoked or key.secret_sha256 != digest:
            metrics.AUTH_FAILURES.labels("invalid").inc()
            raise Unauthenticated("invalid or revoked API key")
        role = api_keys.role_of(key)
        if not api_keys.allowed(role, method):
            metrics.AUTH_FAILURES.labels("not_admin").inc()
            if role == api_keys.CLIENT:
                raise PermissionDenied(
                    f"key {key.key_id} has role client (a data-plane key); registry method {method} "
                    "needs an admin key"
                )
            raise PermissionDenied(f"key {key.key_id} has role {role}, which may not call {method}; "
                                   "it needs an admin key")
        return key

    @staticmethod
    def _revision(context: grpc.aio.ServicerContext, revision: int) -> None:
        if revision:
            context.set_trailing_metadata(((REVISION_METADATA, str(revision)),))

    # ---- catalogue -------------------------------------------------------------------

    @admin_rpc
    async def RegisterModelVersion(self, request, context, caller):
        # A thread: checking the artifact stats the filesystem, which may be a slow mount.
        version = await asyncio.to_thread(
            validation.build_version, request, caller.key_id, now_ms(), self.artifact_roots
        )
        model, number = version.model, version.version

        async def prepare(pipe: Any) -> tuple[rpb.ModelVersion, Callable[[Any], None]]:
            if await pipe.hexists(self.keys.versions(model), number):
                raise AlreadyExists(
                    f"version {number} of model {model!r} is already registered; versions are "
                    "immutable, register a new version number"
                )
            has_policy = await pipe.hexists(self.keys.policies, model)
            # States follow traffic (rollout/records.py): the first version takes all of it
            # (production); a later one takes none until a policy gives it some (staged).
            served = rpb.ModelVersion()
            served.CopyFrom(version)
            if version.state != rpb.ARCHIVED:
                served.state = rpb.STAGED if has_policy else rpb.PRODUCTION

            def queue(p: Any) -> None:
                p.sadd(self.keys.models, model)
                p.hset(self.keys.versions(model), number, served.SerializeToString())
                if not has_policy and version.state != rpb.ARCHIVED:
                    # The first version of a model takes all its traffic until an operator
                    # sets a policy, so a freshly registered model is servable at once; its
                    # state says so (production), as every policy write keeps states in line.
                    first = rpb.TrafficPolicy(model=model, weights={number: 100})
                    records.queue_policy_change(p, self.rollout_keys, model, None, first, {number: served},
                                                who=caller.key_id, action="register",
                                                reason=f"first version {number} takes all traffic", at_ms=now_ms())

            return served, queue

        result, revision = await self.store.transact(prepare)
        metrics.WRITES.labels("register_version").inc()
        logger.info("registry: %s registered %s version %s (%s, sha256 %s)",
                    caller.key_id, model, number, version.backend, version.sha256[:12])
        self._revision(context, revision)
        return result

    @admin_rpc
    async def ListModels(self, request, context, caller):
        catalogue = await self.store.current()
        return rpb.ListModelsResponse(models=catalogue.models())

    @admin_rpc
    async def GetModel(self, request, context, caller):
        validation.check_name(request.name)
        model = (await self.store.current()).model(request.name)
        if model is None:
            raise NotFound(f"model {request.name!r} is not registered")
        return model

    @admin_rpc
    async def SetVersionState(self, request, context, caller):
        model = validation.check_name(request.model)
        number = validation.check_version(request.version)
        state = validation.check_state(request.state)

        async def prepare(pipe: Any) -> tuple[rpb.ModelVersion, Callable[[Any], None]]:
            raw = await pipe.hget(self.keys.versions(model), number)
            if raw is None:
                if not await pipe.sismember(self.keys.models, model):
                    raise NotFound(f"model {model!r} is not registered")
                raise NotFound(f"version {number} of model {model!r} is not registered")
            version = rpb.ModelVersion.FromString(raw)
            raw_policy = await pipe.hget(self.keys.policies, model)
            policy = rpb.TrafficPolicy.FromString(raw_policy) if raw_policy else None
            if state == rpb.ARCHIVED:
                validation.check_archivable(model, number, policy)
            else:
                # States follow traffic (rollout/records.py): a state that the policy
                # contradicts would say something routing does not do.
                implied = records.implied_state(policy, number, rpb.STAGED)
                if state != implied:
                    raise FailedPrecondition(
                        f"version {number} of model {model!r} is {validation.state_name(implied)} by its traffic "
                        f"({', '.join(validation.traffic_roles(policy, number)) or 'none'}); states follow the "
                        "traffic policy: use `shunter traffic switch`, `shunter traffic set` or "
                        "`shunter rollout start` to change what it serves"
                    )
            version.state = state

            def queue(p: Any) -> None:
                p.hset(self.keys.versions(model), number, version.SerializeToString())

            return version, queue

        result, revision = await self.store.transact(prepare)
        metrics.WRITES.labels("set_version_state").inc()
        logger.info("registry: %s set %s version %s to %s",
                    caller.key_id, model, number, validation.state_name(state))
        self._revision(context, revision)
        return result

    # ---- traffic ---------------------------------------------------------------------

    @admin_rpc
    async def SetTrafficPolicy(self, request, context, caller):
        model = validation.check_name(request.policy.model)

        async def prepare(pipe: Any) -> tuple[rpb.TrafficPolicy, Callable[[Any], None]]:
            raw = await pipe.hgetall(self.keys.versions(model))
            versions = {k.decode(): rpb.ModelVersion.FromString(v) for k, v in raw.items()}
            policy = validation.check_policy(request.policy, versions)
            before = await records.read_policy(pipe, self.keys, model)
            rollout = await records.read_rollout(pipe, self.rollout_keys, model)
            if (rollout is not None and rollout.state in records.ACTIVE
                    and dict(policy.weights) != dict(before.weights if before else {})):
                # The rollout's controller owns the weights while it runs; options may change.
                raise FailedPrecondition(
                    f"a rollout of {model} to version {rollout.version} is {records.STATE_NAMES[rollout.state]} "
                    f"and owns its weights; abort it first (shunter rollout abort {model})"
                )

            def queue(p: Any) -> None:
                # Audited, and the versions' states follow the new policy (rollout/records.py).
                records.queue_policy_change(p, self.rollout_keys, model, before, policy, versions,
                                            who=caller.key_id, action="set", reason="", at_ms=now_ms())

            return policy, queue

        result, revision = await self.store.transact(prepare)
        metrics.WRITES.labels("set_traffic_policy").inc()
        logger.info("registry: %s set the traffic policy of %s: weights %s shadow %s fallback %s",
                    caller.key_id, model, dict(result.weights), result.shadow_version or "-",
                    result.fallback_version or "-")
        self._revision(context, revision)
        return result

    @admin_rpc
    async def GetTrafficPolicy(self, request, context, caller):
        validation.check_name(request.model)
        model = (await self.store.current()).model(request.model)
        if model is None:
            raise NotFound(f"model {request.model!r} is not registered")
        return model.policy

    # ---- workers ---------------------------------------------------------------------

    @admin_rpc
    async def RegisterWorker(self, request, context, caller):
        validation.check_worker(request)
        worker_id = request.worker_id or f"w-{secrets.token_hex(6)}"
        ttl_s = request.ttl_s or self.default_ttl_s
        status = rpb.Worker(versions=request.versions)
        revision, expires = await self.store.register_worker(worker_id, request.address, status, ttl_s * 1000)
        metrics.WRITES.labels("register_worker").inc()
        logger.info("registry: worker %s at %s registered (lease %ss)", worker_id, request.address, ttl_s)
        self._revision(context, revision)
        return rpb.WorkerLease(worker_id=worker_id, ttl_s=ttl_s, expires_at_ms=expires)

    @admin_rpc
    async def Heartbeat(self, request, context, caller):
        if not validation.WORKER_ID_RE.match(request.worker_id):
            raise InvalidArgument(f"worker_id {request.worker_id!r} is not well-formed")
        validation.check_statuses(request.versions)
        status = rpb.Worker(versions=request.versions)
        revision, expires, ttl_ms = await self.store.heartbeat(request.worker_id, status)
        if revision:
            metrics.WRITES.labels("heartbeat").inc()
        self._revision(context, revision)
        return rpb.WorkerLease(worker_id=request.worker_id, ttl_s=ttl_ms // 1000, expires_at_ms=expires)

    @admin_rpc
    async def DeregisterWorker(self, request, context, caller):
        if not validation.WORKER_ID_RE.match(request.worker_id):
            raise InvalidArgument(f"worker_id {request.worker_id!r} is not well-formed")
        revision = int(await self.store.run_script("DEREGISTER_WORKER", request.worker_id))
        if revision:
            metrics.WRITES.labels("deregister_worker").inc()
            logger.info("registry: worker %s deregistered", request.worker_id)
        self._revision(context, revision)
        return rpb.DeregisterWorkerResponse()

    @admin_rpc
    async def ListWorkers(self, request, context, caller):
        catalogue = await self.store.current(force=True)
        return rpb.ListWorkersResponse(workers=catalogue.sorted_workers())

    # ---- API keys --------------------------------------------------------------------

    @admin_rpc
    async def CreateApiKey(self, request, context, caller):
        role = validation.check_key_request(request)
        key_id, secret = api_keys.new_key()
        key = rpb.ApiKey(
            key_id=key_id, tenant=request.tenant, models=request.models, rate=request.rate,
            admin=role == api_keys.ADMIN, role=role, created_at_ms=now_ms(),
            secret_sha256=api_keys.key_hash(secret),
        )

        async def prepare(pipe: Any) -> tuple[rpb.ApiKey, Callable[[Any], None]]:
            def queue(p: Any) -> None:
                p.hset(self.keys.keys, key_id, key.SerializeToString())
                p.hset(self.keys.key_hashes, key.secret_sha256, key_id)

            return key, queue

        _, revision = await self.store.transact(prepare)
        metrics.WRITES.labels("create_key").inc()
        logger.info("registry: %s created key %s for tenant %s (role %s)",
                    caller.key_id, key_id, request.tenant, role)
        self._revision(context, revision)
        return rpb.CreateApiKeyResponse(key=key, secret=secret)

    @admin_rpc
    async def ListApiKeys(self, request, context, caller):
        catalogue = await self.store.current()
        return rpb.ListApiKeysResponse(keys=catalogue.sorted_keys())

    @admin_rpc
    async def RevokeApiKey(self, request, context, caller):
        key_id = request.key_id
        if not _KEY_ID_RE.match(key_id):
            raise InvalidArgument(f"key id {key_id!r} is not well-formed")

        async def prepare(pipe: Any) -> tuple[rpb.ApiKey, Callable[[Any], None]]:
            raw = await pipe.hgetall(self.keys.keys)
            keys = {k.decode(): rpb.ApiKey.FromString(v) for k, v in raw.items()}
            if key_id not in keys:
                raise NotFound(f"key {key_id!r} does not exist")
            key = keys[key_id]
            others = [k for k in keys.values() if k.admin and not k.revoked and k.key_id != key_id]
            if key.admin and not key.revoked and not others:
                raise FailedPrecondition(
                    f"key {key_id} is the last active admin key; create another admin key first"
                )
            key.revoked = True

            def queue(p: Any) -> None:
                p.hset(self.keys.keys, key_id, key.SerializeToString())

            return key, queue

        result, revision = await self.store.transact(prepare)
        metrics.WRITES.labels("revoke_key").inc()
        logger.info("registry: %s revoked key %s", caller.key_id, key_id)
        self._revision(context, revision)
        return result

    # ---- the watch stream ------------------------------------------------------------

    async def WatchRoutingTable(self, request, context):
        if self.draining:
            raise Unavailable("the registry is shutting down; try another replica")
        await self.authorise(context, "WatchRoutingTable")
        metrics.WATCHERS.inc()
        drained = asyncio.ensure_future(self._drained.wait())
        sent = None
        try:
            while not self.draining:
                changed = self.store.change_event()
                catalogue = self.store.catalogue
                if catalogue is not None and catalogue.revision != sent:
                    await context.write(catalogue.routing_table)
                    metrics.SNAPSHOTS_SENT.inc()
                    sent = catalogue.revision
                    continue
                waiter = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait({waiter, drained}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:
            drained.cancel()
            metrics.WATCHERS.dec()
