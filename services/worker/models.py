"""The model versions a worker holds: load, warm up, serve, drain, unload.

``ModelManager`` is the worker's ModelHost: standalone mode fills it from the local
model repository at start-up; cluster mode (services/worker/cluster.py) loads and
unloads versions as the registry's routing table changes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from pathlib import Path

from services.common.admission import AdmissionSettings
from services.common.errors import NotFound, Unavailable
from services.common.model_config import ModelConfig
from services.common.signature import Signature
from services.gen.shunter.registry.v1 import registry_pb2
from services.monitoring import collector as monitoring_metrics
from services.monitoring.observer import VersionMonitor
from services.worker import metrics
from services.worker.batching.batcher import Arrays, Batcher, BatchTiming, EngineInstance
from services.worker.batching.policy import REASONS, BatchPolicy
from services.worker.daemon_executor import DaemonThreadExecutor
from services.worker.devices import resolve_device
from services.worker.engines import create_engine
from services.worker.engines.base import Engine, EngineLoadError, EngineSpec
from services.worker.engines.python_handler import untrusted_code
from services.worker.statistics import VersionStatistics

logger = logging.getLogger(__name__)


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "UNAVAILABLE"


class LoadedVersion:
    """One model version: its engines (one per instance), its batcher and statistics."""

    def __init__(self, spec: EngineSpec, admission: AdmissionSettings | None = None, engine_nice: int = 0) -> None:
        self.spec = spec
        #: Added to each instance thread's nice value (WorkerSettings.engine_nice).
        self.engine_nice = engine_nice
        #: The time bounds of the version's queue (the counts are the edge's: admission.py).
        self.admission = admission or AdmissionSettings()
        self.model = spec.model
        self.version = spec.version
        self.config: ModelConfig = spec.config
        self.signature: Signature = spec.config.signature()
        self.output_names = tuple(t.name for t in self.config.outputs)
        self.output_datatypes = {t.name: t.datatype for t in self.config.outputs}
        self.variable_shapes = any(-1 in t.shape for t in self.config.inputs)
        self.state = VersionState.LOADING
        self.error = ""
        self.stats = VersionStatistics()
        self.batcher: Batcher | None = None
        self._engines: list[Engine] = []
        labels = {"model": self.model, "version": self.version}
        self._queue_depth = metrics.QUEUE_DEPTH.labels(**labels)
        self._queue_time = metrics.QUEUE_DURATION.labels(**labels)
        self._compute_time = metrics.COMPUTE_DURATION.labels(**labels)
        self._batch_size = metrics.BATCH_SIZE.labels(**labels)
        self._batches = {reason: metrics.BATCHES.labels(reason=reason, **labels) for reason in REASONS}
        #: Output metrics and drift counting (config.yaml ``monitoring:``); None: off.
        self.monitor = VersionMonitor(self.model, self.version, self.config) if self.config.monitoring else None

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    async def load(self) -> None:
        """Create, load and warm up every instance, each on its own thread."""
        config = self.config
        instances: list[EngineInstance] = []
        executors: list[DaemonThreadExecutor] = []
        loop = asyncio.get_running_loop()
        try:
            for index in range(config.instances):
                executor = DaemonThreadExecutor(f"{self.model}-v{self.version}-{index}", self.engine_nice)
                executors.append(executor)
                engine = create_engine(self.spec)
                await loop.run_in_executor(executor, _load_and_warm, engine)
                self._engines.append(engine)
                infer = self.monitor.wrap(engine.infer) if self.monitor is not None else engine.infer
                instances.append(EngineInstance(infer=infer, executor=executor))
        except BaseException as exc:
            # Also when cancelled (a load timeout, shutdown): a thread still inside load()
            # finishes on its own, and being a daemon it does not hold the process.
            for executor in executors:
                executor.shutdown(wait=False, cancel_futures=True)
            self.state = VersionState.FAILED
            if isinstance(exc, asyncio.CancelledError):
                self.error = "loading was cancelled (timed out or the worker is stopping)"
            else:
                self.error = str(exc) or type(exc).__name__
            raise
        batching = config.dynamic_batching
        if batching is not None:
            policy = BatchPolicy(
                max_batch_size=config.max_batch_size,
                max_queue_delay_s=batching.max_queue_delay_us / 1e6,
                preferred_batch_sizes=tuple(batching.preferred_batch_sizes),
            )
            max_queue = batching.max_queue_size
        else:
            policy = BatchPolicy.unbatched()
            max_queue = 1024
        self.batcher = Batcher(
            instances,
            policy,
            max_queue,
            batched=batching is not None,
            on_batch=self._record_batch,
            on_loop=config.run_on_event_loop,
            name=f"{self.model}/{self.version}",
            max_queue_wait_s=self.admission.max_queue_wait_s,
            deadline_aware=self.admission.deadline_aware,
        )
        self.batcher.start()
        metrics.ROWS_PER_INSTANCE.track(self.model, self.version, self.batcher)
        if self.monitor is not None:
            monitoring_metrics.COLLECTOR.track(self.monitor)
        self.state = VersionState.READY

    def _record_batch(self, timing: BatchTiming) -> None:
        self.stats.record_batch(timing)
        self._batch_size.observe(timing.rows)
        self._batches[timing.reason].inc()
        self._compute_time.observe((timing.input_ns + timing.infer_ns + timing.output_ns) / 1e9)
        for queue_ns in timing.queue_ns:
            self._queue_time.observe(queue_ns / 1e9)

    def admit(self, timeout_s: float | None) -> None:
        """Refuse at once a request the version's queue cannot serve in time (batcher.admit)."""
        if self.batcher is not None:
            self.batcher.admit(timeout_s)

    async def infer(self, inputs: Arrays, rows: int, timeout_s: float | None) -> Arrays:
        if self.state is not VersionState.READY or self.batcher is None:
            raise Unavailable(f"model '{self.model}' version {self.version} is not ready ({self.state.value})")
        shape_key = (
            tuple((name, array.shape[1:]) for name, array in inputs.items()) if self.variable_shapes else None
        )
        start = time.perf_counter_ns()
        self._queue_depth.inc()
        ok = False
        try:
            result = await self.batcher.submit(inputs, rows, timeout_s, shape_key)
            ok = True
            return result
        finally:
            self._queue_depth.dec()
            self.stats.record_request(ok, time.perf_counter_ns() - start)

    @property
    def in_flight(self) -> int:
        return self.batcher.in_flight if self.batcher else 0

    async def drain(self) -> None:
        if self.batcher is not None:
            await self.batcher.drain()

    async def close(self) -> None:
        self.state = VersionState.UNLOADING
        if self.batcher is not None:
            metrics.ROWS_PER_INSTANCE.untrack(self.batcher)
            await self.batcher.close()
        if self.monitor is not None:
            monitoring_metrics.COLLECTOR.untrack(self.monitor)
        for engine in self._engines:
            try:
                engine.close()
            except Exception:
                logger.exception("closing %s v%s", self.model, self.version)
        self._engines.clear()


def _load_and_warm(engine: Engine) -> None:
    engine.load()
    engine.warmup()


class ModelManager:
    """Every version this worker serves, by model name and version string.

    ``trusted_roots`` limits where python handlers may run from: None trusts everything
    (standalone mode, where the operator chose the repository), otherwise a version with
    a handler must live under one of these directories (cluster mode, where the registry
    names the artifact).
    """

    def __init__(
        self,
        trusted_roots: tuple[Path, ...] | None = None,
        admission: AdmissionSettings | None = None,
        engine_nice: int = 0,
    ) -> None:
        self._trusted_roots = trusted_roots
        self._admission = admission
        self._engine_nice = engine_nice
        self._models: dict[str, dict[str, LoadedVersion]] = {}
        self._latest: dict[str, LoadedVersion] = {}

    def models(self) -> dict[str, dict[str, LoadedVersion]]:
        return self._models

    async def load_version(self, model: str, version: str, version_dir: Path, config: ModelConfig) -> None:
        existing = self._models.get(model, {}).get(version)
        if existing is not None and existing.state in (VersionState.READY, VersionState.LOADING):
            return
        device_error = ""
        try:
            device = resolve_device(config.device, f"{model} version {version}")
            if device != config.device:
                config = config.model_copy(update={"device": device})
        except EngineLoadError as exc:
            device_error = str(exc)
        loaded = LoadedVersion(EngineSpec(model, version, version_dir, config), self._admission, self._engine_nice)
        self._models.setdefault(model, {})[version] = loaded
        if device_error:
            loaded.state, loaded.error = VersionState.FAILED, device_error
            logger.error("cannot load %s version %s: %s", model, version, device_error)
            raise EngineLoadError(device_error)
        refusal = None if self._trusted_roots is None else untrusted_code(loaded.spec, self._trusted_roots)
        if refusal is not None:
            loaded.state = VersionState.FAILED
            loaded.error = f"{model} version {version}: {refusal}"
            logger.error("refusing %s version %s: %s", model, version, loaded.error)
            raise EngineLoadError(loaded.error)
        logger.info("loading %s version %s (%s)", model, version, config.backend)
        try:
            await loaded.load()
        except Exception as exc:
            logger.error("cannot load %s version %s: %s", model, version, loaded.error or exc)
            raise
        finally:
            self._refresh_latest(model)
        logger.info("ready: %s version %s", model, version)

    async def unload_version(self, model: str, version: str) -> None:
        loaded = self._models.get(model, {}).pop(version, None)
        if loaded is None:
            return
        self._refresh_latest(model)
        if not self._models.get(model):
            self._models.pop(model, None)
        logger.info("unloading %s version %s", model, version)
        await loaded.drain()
        await loaded.close()

    def _refresh_latest(self, model: str) -> None:
        ready = [v for v in self._models.get(model, {}).values() if v.ready]
        if ready:
            self._latest[model] = max(ready, key=lambda v: int(v.version))
        else:
            self._latest.pop(model, None)

    def get(self, model: str, version: str = "") -> LoadedVersion:
        """The version a request names, or the highest ready one when it names none."""
        if version:
            versions = self._models.get(model)
            if versions is None:
                raise NotFound(f"unknown model '{model}'")
            loaded = versions.get(version)
            if loaded is None:
                raise NotFound(f"model '{model}' has no version '{version}' (has: {', '.join(sorted(versions))})")
            return loaded
        loaded = self._latest.get(model)
        if loaded is None:
            if model in self._models:
                raise Unavailable(f"model '{model}' has no ready version")
            raise NotFound(f"unknown model '{model}'")
        return loaded

    def version_statuses(self) -> list[registry_pb2.VersionStatus]:
        return [
            registry_pb2.VersionStatus(
                model=model, version=version, ready=v.ready, in_flight=v.in_flight, error=v.error
            )
            for model, versions in self._models.items()
            for version, v in versions.items()
        ]

    async def drain(self) -> None:
        await asyncio.gather(*(v.drain() for versions in self._models.values() for v in versions.values()))

    async def close(self) -> None:
        for versions in list(self._models.values()):
            for loaded in list(versions.values()):
                await loaded.close()
        self._models.clear()
        self._latest.clear()

