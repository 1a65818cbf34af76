"""Cluster mode: a worker that serves what the registry assigns and holds a lease.

``ClusterMember`` runs three tasks beside the worker's gRPC server:

- the **lease**: register (address, per-version readiness), then heartbeat every
  ttl/3 — and at once whenever a version becomes ready or fails, so routers learn it
  without waiting; a lost lease (expired during an outage) is registered again under the
  same worker id;
- the **watch**: follow the registry's routing table and note, for the models given with
  ``--serve``, which non-archived versions should be loaded;
- the **reconciler**: one load or unload at a time towards that wish. A load fetches the
  artifact by URI, verifies its sha256 (a mismatch is refused, logged and reported in
  the heartbeat, never loaded), parses the registered config and hands the version to
  the ``ModelHost``, which loads and warms it before reporting it ready. A version that
  is archived or gone is drained, then unloaded.

When the registry is unreachable nothing is unloaded: the worker keeps serving what it
has and catches up when the stream resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common import artifacts
from services.common.errors import NotFound, PermissionDenied, ShunterError, Unauthenticated
from services.common.model_config import ModelConfig, parse_model_config
from services.common.registry_client import RegistryClient
from services.common.tls import ClientTls
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.worker.engines.base import UnsafeArtifact

logger = logging.getLogger(__name__)

#: Seconds stop() waits for its tasks and for the registry client to close.
STOP_TIMEOUT_S = 5.0
#: Seconds before a load that failed for another reason than its sha256 is tried again.
LOAD_RETRY_S = 30.0
#: How long start-up waits for the first registration (to tell a refused key from a slow registry).
FIRST_REGISTER_TIMEOUT_S = 10.0
#: Seconds one version may take to load and warm up before it is given up for good.
LOAD_TIMEOUT_S = 900.0

Key = tuple[str, str]  # (model, version)


class ModelHost(Protocol):
    async def load_version(self, model: str, version: str, version_dir: Path, config: ModelConfig) -> None:
        """Load and warm up; raise on failure."""

    async def unload_version(self, model: str, version: str) -> None:
        """Drain queued work, then unload."""

    def version_statuses(self) -> list[rpb.VersionStatus]: ...


@dataclass(frozen=True)
class _Failure:
    sha256: str
    error: str
    #: Monotonic time after which to try again; None: never (the artifact is not the registered one).
    retry_at: float | None


def _assigned(table: rpb.RoutingTable, models: frozenset[str]) -> dict[Key, rpb.ModelVersion]:
    return {
        (model.name, version.version): version
        for model in table.models
        if model.name in models
        for version in model.versions
        if version.state != rpb.ARCHIVED
    }


def prepare_version(
    version: rpb.ModelVersion, cancel: threading.Event | None = None, roots: tuple[Path, ...] = ()
) -> tuple[Path, ModelConfig]:
    """Fetch and verify a version's artifact: its version directory and config.

    Raises ArtifactError for a missing or disallowed artifact (a device, a FIFO, over the
    size cap), a sha256 mismatch, hashing past its timeout or ``cancel`` being set. Runs in
    a thread: hashing a large artifact must not stall the event loop. With ``roots`` the
    artifact, and every file inside a directory artifact, must resolve inside them.
    """
    path = artifacts.fetch(version.artifact_uri, roots)
    digest = artifacts.sha256_of(path, cancel=cancel, roots=roots)
    if digest != version.sha256:
        raise ShaMismatch(
            f"sha256 mismatch: the registry recorded {version.sha256} but {version.artifact_uri} "
            f"has {digest}; refusing to load it"
        )
    config = parse_model_config(version.config_yaml, f"config.yaml of {version.model} version {version.version}")
    if path.is_dir():
        return path, config
    if path.name != config.artifact_name:
        # Load exactly the file whose sha256 was verified, whatever the backend default.
        config = config.model_copy(update={"artifact": path.name})
    return path.parent, config


class ShaMismatch(artifacts.ArtifactError):
    """The artifact is not the one registered: refused for good (until re-registered)."""


class KeyRefused(Unauthenticated):
    """The registry refused this worker's key at start-up; the worker exits (status 2, server.run)."""


class LoadTimeout(Exception):
    """A version took longer than the load timeout: refused for good (it would hang again)."""


async def _prepare_off_loop(version: rpb.ModelVersion, roots: tuple[Path, ...]) -> tuple[Path, ModelConfig]:
    """``prepare_version`` on a daemon thread that stops when the awaiting task is cancelled.

    Not the default executor: the interpreter joins its threads at exit, so one stuck
    reading an artifact would keep a SIGTERMed worker from ever exiting. Cancelling the
    task (stop() does) sets the event the hashing checks between chunks.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[Path, ModelConfig]] = loop.create_future()
    cancel = threading.Event()

    def settle(result: tuple[Path, ModelConfig] | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def deliver(result: tuple[Path, ModelConfig] | None, error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop has closed: the worker is exiting and nobody waits

    def work() -> None:
        try:
            result = prepare_version(version, cancel, roots)
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            deliver(None, exc)
            return
        deliver(result, None)

    thread = threading.Thread(target=work, name=f"prepare-{version.model}-{version.version}", daemon=True)
    thread.start()
    try:
        return await done
    finally:
        cancel.set()


class ClusterMember:
    def __init__(
        self,
        registry_address: str,
        admin_key: str,
        serve_models: list[str],
        host: ModelHost,
        advertise_address: str,
        lease_ttl_s: int = 0,
        artifact_roots: tuple[Path, ...] = (),
        load_timeout_s: float = LOAD_TIMEOUT_S,
        on_keys: Callable[[Sequence[rpb.ApiKey]], None] | None = None,
        registry_tls: ClientTls | None = None,
    ) -> None:
        if not advertise_address:
            raise ValueError("cluster mode needs an address routers can dial (--advertise HOST:PORT)")
        self.client = RegistryClient(registry_address, admin_key, tls=registry_tls)
        #: Hears the key table of every routing table taken (the worker's inference guard).
        self.on_keys = on_keys
        self.serve = frozenset(serve_models)
        self.host = host
        self.advertise_address = advertise_address
        self.lease_ttl_s = lease_ttl_s
        #: Where artifacts may be read from (empty: anywhere local).
        self.artifact_roots = artifact_roots
        #: A version still loading after this long is refused, so the next ones can load.
        self.load_timeout_s = load_timeout_s
        self.worker_id = ""
        #: Set once the first routing table has been reconciled (loads attempted).
        self.synced = asyncio.Event()
        self._registered = False
        self._desired: dict[Key, rpb.ModelVersion] = {}
        self._have_table = False
        self._attempted: set[Key] = set()  # handed to host.load_version (loaded or failed there)
        self._loading: set[Key] = set()
        self._failures: dict[Key, _Failure] = {}
        self._wake = asyncio.Event()
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Check the key, then start following the registry; loads happen in the background.

        A key the registry refuses raises KeyRefused (fatal: retrying cannot fix it); a
        registry that cannot be reached yet is retried by the lease loop.
        """
        logger.info("cluster mode: registry %s, serving %s, advertising %s",
                    ",".join(self.client.addresses), ",".join(sorted(self.serve)), self.advertise_address)
        try:
            lease = await asyncio.wait_for(
                self.client.register_worker(self.advertise_address, self.statuses(), ttl_s=self.lease_ttl_s),
                FIRST_REGISTER_TIMEOUT_S,
            )
            self.worker_id, self._registered = lease.worker_id, True
            logger.info("registered as worker %s (lease %ss)", lease.worker_id, lease.ttl_s)
        except (Unauthenticated, PermissionDenied) as exc:
            raise KeyRefused(
                f"the registry at {','.join(self.client.addresses)} refuses this worker's key ({exc}); "
                "give a worker-role (or admin) key with --admin-key, --key-file or $SHUNTER_ADMIN_KEY"
            ) from None
        except (ShunterError, TimeoutError) as exc:
            logger.warning("registry %s not reachable yet (%s); retrying, NOT_SERVING until it answers",
                           ",".join(self.client.addresses), exc or "timed out")
        for name, coro in (("lease", self._lease_loop()), ("watch", self._watch_loop()),
                           ("reconcile", self._reconcile_loop())):
            self._tasks.append(asyncio.create_task(coro, name=f"cluster-{name}"))

    async def stop(self) -> None:
        """Stop following and deregister, so routers stop picking this worker."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task stuck in a gRPC call must not keep the worker from exiting.
            _done, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in stuck:
                logger.warning("cluster task %s did not stop within %ss", task.get_name(), STOP_TIMEOUT_S)
        if self._registered:
            try:
                await asyncio.wait_for(self.client.deregister_worker(self.worker_id), 5.0)
                logger.info("deregistered worker %s", self.worker_id)
            except (ShunterError, TimeoutError) as exc:
                logger.warning("could not deregister worker %s (%s); its lease will expire", self.worker_id, exc)
            self._registered = False
        try:
            await asyncio.wait_for(self.client.close(), STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("closing the registry client took over %ss", STOP_TIMEOUT_S)

    async def wait_synced(self, timeout_s: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.synced.wait(), timeout_s)
        return self.synced.is_set()

    def statuses(self) -> list[rpb.VersionStatus]:
        """Per-version readiness for heartbeats: the host's, plus loads under way or refused."""
        out = {(s.model, s.version): s for s in self.host.version_statuses()}
        for model, version in self._loading:
            out.setdefault((model, version), rpb.VersionStatus(model=model, version=version, ready=False))
        for (model, version), failure in self._failures.items():
            current = out.get((model, version))
            if current is None or not current.ready:
                out[(model, version)] = rpb.VersionStatus(
                    model=model, version=version, ready=False, error=failure.error
                )
        return [out[key] for key in sorted(out)]

    # ---- lease -----------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        failures = 0
        while True:
            interval = 1.0
            try:
                if not self._registered:
                    lease = await self.client.register_worker(
                        self.advertise_address, self.statuses(), ttl_s=self.lease_ttl_s, worker_id=self.worker_id
                    )
                    self.worker_id, self._registered = lease.worker_id, True
                    logger.info("registered as worker %s (lease %ss)", lease.worker_id, lease.ttl_s)
                else:
                    lease = await self.client.heartbeat(self.worker_id, self.statuses())
                interval = max(0.1, lease.ttl_s / 3)
                failures = 0
            except NotFound:
                logger.warning("lease of worker %s was lost (expired?); registering again", self.worker_id)
                self._registered = False
                interval = 0.1
            except ShunterError as exc:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    logger.warning("registry heartbeat failed (%s); retrying", exc)
                interval = min(1.0, 0.2 * failures) * random.uniform(0.5, 1.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), interval)
            self._poke.clear()

    # ---- watch and reconcile ---------------------------------------------------------

    async def _watch_loop(self) -> None:
        revision = 0
        while True:
            try:
                async for table in self.client.watch():
                    desired = _assigned(table, self.serve)
                    if table.revision < revision and not set(self._desired) <= set(desired):
                        # The registry's Redis lost its data and no registry remembered it:
                        # keep serving what it assigned before rather than unload it all.
                        logger.error("routing table revision %d went back from %d without versions this "
                                     "worker serves; keeping them until the registry has them again",
                                     table.revision, revision)
                        continue
                    revision = table.revision
                    if self.on_keys is not None:
                        self.on_keys(table.keys)
                    self._desired = desired
                    self._have_table = True
                    self._wake.set()
            except (Unauthenticated, PermissionDenied) as exc:
                logger.error("the registry refuses this worker's key (%s); retrying in 10 s", exc)
                await asyncio.sleep(10.0)

    async def _reconcile_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._reconcile()
            except Exception:
                logger.exception("cluster reconcile failed; will retry")
                asyncio.get_running_loop().call_later(1.0, self._wake.set)
            if self._have_table:
                self.synced.set()

    async def _reconcile(self) -> None:
        desired = self._desired
        for key in sorted(set(self._attempted) | set(self._failures)):
            if key not in desired:
                await self._unload(key)
        for key, version in sorted(desired.items()):
            if key in self._attempted and key not in self._failures:
                continue
            failure = self._failures.get(key)
            if failure is not None and failure.sha256 == version.sha256:
                if failure.retry_at is None or time.monotonic() < failure.retry_at:
                    continue
            if self._desired is not desired and key not in self._desired:
                continue  # archived while we were loading others
            await self._load(key, version)

    async def _load(self, key: Key, version: rpb.ModelVersion) -> None:
        model, number = key
        self._loading.add(key)
        self._poke.set()
        try:
            version_dir, config = await _prepare_off_loop(version, self.artifact_roots)
            self._attempted.add(key)
            try:
                await asyncio.wait_for(self.host.load_version(model, number, version_dir, config), self.load_timeout_s)
            except TimeoutError:
                raise LoadTimeout(
                    f"did not load and warm up within {self.load_timeout_s:g} s (--load-timeout-s); "
                    "refusing it until it is registered again"
                ) from None
            self._failures.pop(key, None)
            logger.info("cluster: %s version %s loaded from %s", model, number, version.artifact_uri)
        except (ShaMismatch, UnsafeArtifact, LoadTimeout) as exc:
            # Not retried: the same bytes would be refused again (until re-registered).
            logger.error("refusing %s version %s: %s", model, number, exc)
            self._failures[key] = _Failure(version.sha256, str(exc), None)
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            logger.error("cannot load %s version %s: %s (retrying in %.0f s)", model, number, message, LOAD_RETRY_S)
            self._failures[key] = _Failure(version.sha256, message, time.monotonic() + LOAD_RETRY_S)
            asyncio.get_running_loop().call_later(LOAD_RETRY_S, self._wake.set)
        finally:
            self._loading.discard(key)
            self._poke.set()

    async def _unload(self, key: Key) -> None:
        model, number = key
        self._failures.pop(key, None)
        if key in self._attempted:
            self._attempted.discard(key)
            logger.info("cluster: %s version %s is no longer assigned; draining and unloading", model, number)
            try:
                await self.host.unload_version(model, number)
            except Exception:
                logger.exception("cluster: unloading %s version %s failed", model, number)
        self._poke.set()
