"""The order of a run: measure the original, build and measure each candidate, judge, pick.

Each candidate gets its own directory ``<workdir>/<model>/<candidate>/`` holding its
config.yaml and artifact (a worker can serve it from there, and ``--register`` registers
that directory). A candidate that fails to build or to load is reported with the reason
and the run goes on; only the operator's own mistakes (OptimizeError) stop it.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.optimize.errors import OptimizeError, TechniqueNotApplicable, TechniqueSkipped
from services.optimize.evalset import EvalSet
from services.optimize.measure import Loaded, Measurement, time_all
from services.optimize.plan import Technique
from services.optimize.source import Original, write_config
from services.optimize.techniques.base import Context
from services.optimize.techniques.compile import copy_handler_files
from services.optimize.verdict import WINNER_RULE, Quality, Scored, assess, infer_task, judge, pick_winner

logger = logging.getLogger(__name__)


@dataclass
class Result:
    name: str
    #: accepted | rejected | skipped | failed; the original is "original".
    status: str
    reason: str = ""
    directory: Path | None = None
    backend: str = ""
    measurement: Measurement | None = None
    quality: Quality | None = None
    drop: float | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    original: Original
    evalset: EvalSet
    task: str
    max_drop: float
    results: list[Result]
    winner: str | None
    rule: str = WINNER_RULE
    registered_version: str | None = None

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)


class ProgressReporter(Protocol):
    """What the runner reports as it goes; the CLI draws it as a bar."""

    def start(self, total: int) -> None: ...
    def step(self, what: str) -> None: ...
    def detail(self, done: int, total: int, what: str) -> None: ...


class Progress:
    """Reports nothing (the runner's default)."""

    def start(self, total: int) -> None: ...
    def step(self, what: str) -> None: ...
    def detail(self, done: int, total: int, what: str) -> None: ...


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def run(original: Original, evalset: EvalSet, techniques: list[Technique], workdir: Path, max_drop: float,
        task: str | None = None, transfer: EvalSet | None = None, seconds_per_point: float = 0.5,
        seed: int = 0, progress: ProgressReporter | None = None, rounds: int = 3,
        trusted_dir: Path | None = None) -> Outcome:
    progress = progress or Progress()
    progress.start(len(techniques) + 2)
    model_dir = workdir / original.model
    model_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(original, evalset, transfer or evalset, transfer is None, seed, trusted_dir, progress.detail)
    copy_handler_files(ctx, model_dir)

    progress.step(f"loading the original ({original.config.backend})")
    try:
        base = Loaded(original.model, original.version, original.version_dir, original.config, evalset)
    except Exception as exc:  # EngineLoadError, or an eval batch the model refuses
        raise OptimizeError(f"{original.model} version {original.version} does not load or run as a worker "
                            f"would run it: {exc}") from exc
    task = task or infer_task(base.outputs, evalset.labels)
    base_quality = assess(task, base.outputs, base.outputs, evalset.labels)
    results = [Result(f"original v{original.version}", "original", "", original.version_dir,
                      original.config.backend, None, base_quality, 0.0)]
    loaded: dict[str, Loaded] = {results[0].name: base}
    try:
        for technique in techniques:
            progress.step(f"building {technique.label}")
            result, engine = _candidate(ctx, technique, model_dir, base, base_quality, task, max_drop)
            results.append(result)
            if engine is not None:
                loaded[result.name] = engine
        progress.step(f"timing {len(loaded)} models, {rounds} rounds")
        time_all(list(loaded.values()), evalset, seconds_per_point, rounds)
    finally:
        for engine in loaded.values():
            engine.close()
    for result in results:
        if result.name in loaded:
            result.measurement = loaded[result.name].measurement()
    base_m = results[0].measurement
    assert base_m is not None
    scored = [Scored(r.name, r.status == "accepted", r.measurement.best_rows_per_s, r.measurement.size_bytes)
              for r in results[1:] if r.measurement is not None]
    winner = pick_winner(scored, base_m.best_rows_per_s, base_m.size_bytes)
    return Outcome(original, evalset, task, max_drop, results, winner)


def _candidate(ctx: Context, technique: Technique, model_dir: Path, base: Loaded, base_quality: Quality,
               task: str, max_drop: float) -> tuple[Result, Loaded | None]:
    """Build, load and judge one candidate; the loaded engine is returned for the timing rounds."""
    out_dir = model_dir / safe_name(technique.label)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    result = Result(technique.label, "failed", directory=out_dir)
    try:
        built = technique.build(ctx, out_dir)
    except TechniqueSkipped as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        result.status, result.reason, result.directory = "skipped", str(exc), None
        return result, None
    except TechniqueNotApplicable as exc:
        result.status, result.reason = "rejected", str(exc)
        return result, None
    except OptimizeError:
        raise
    except Exception as exc:
        logger.exception("building %s failed", technique.label)
        result.reason = f"build failed: {type(exc).__name__}: {exc}"
        return result, None
    result.properties, result.notes = built.properties, built.notes
    config = write_config(out_dir, built.config)
    result.backend = config.backend
    try:
        engine = Loaded(ctx.original.model, technique.label, out_dir, config, ctx.evalset)
    except Exception as exc:
        result.reason = f"does not load or run in the {config.backend} engine: {exc}"
        return result, None
    try:
        result.quality = assess(task, base.outputs, engine.outputs, ctx.evalset.labels)
    except OptimizeError as exc:  # it answers, but not like the original (another output shape)
        engine.close()
        result.reason = str(exc)
        return result, None
    result.drop = base_quality.quality - result.quality.quality
    accepted, why = judge(result.drop, max_drop, result.quality.quality_name)
    result.status, result.reason = ("accepted" if accepted else "rejected"), why
    return result, engine
