"""Python handlers around an engine, and the pure-Python ``python`` backend.

A handler is a module file named by ``handler:`` in config.yaml, relative to the model
directory (the version directory's parent), that may define:

- ``load(model_dir: Path) -> None``: called once when the engine loads (read a tokenizer,
  a label file...). Every engine instance imports its own copy of the module, so module
  globals set here belong to one instance and one thread.
- ``preprocess(inputs) -> tensors``: the request batch (rows concatenated, named as in
  the config's ``inputs``) to the inner engine's tensors (``engine_inputs``).
- ``postprocess(outputs) -> outputs`` or ``postprocess(outputs, inputs) -> outputs``:
  the inner engine's outputs (``engine_outputs``) to the config's ``outputs``; the
  two-argument form also gets what preprocess produced (an attention mask, say).
- ``infer(inputs) -> outputs``: only for ``backend: python``, where it is the model.

Handlers run once per batch, on the engine instance's thread. Handler code is trusted
code from the operator's model repository, but its path must stay inside the model
directory: ``../`` and symlinks that lead out of it are refused.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from services.common.errors import EngineError
from services.worker.engines._support import batch_rows, collect_outputs, run_warmup, warmup_inputs
from services.worker.engines.base import Engine, EngineLoadError, EngineSpec

logger = logging.getLogger(__name__)

_module_ids = itertools.count()

Tensors = dict[str, np.ndarray]


def resolve_in_model_dir(model_dir: Path, relative: str, what: str) -> Path:
    """``model_dir / relative`` if it stays inside ``model_dir`` once resolved, else EngineLoadError."""
    root = model_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise EngineLoadError(f"{what} '{relative}' resolves to {path}, outside the model directory {root}")
    if not path.is_file():
        raise EngineLoadError(f"{what} not found: {path}")
    return path


def handler_source(spec: EngineSpec) -> tuple[Path, str, str] | None:
    """Where the python code of ``spec`` comes from: (model dir, path relative to it, what).

    None when the version runs no python. The worker's trusted-repository check and
    HandlerEngine.load both read this, so they judge the same file.
    """
    config = spec.config
    model_dir = spec.version_dir.parent
    if config.handler is not None:
        return model_dir, config.handler, "handler"
    if config.backend == "python":
        # backend: python with no handler key: the version's own model.py is the model.
        return model_dir, f"{spec.version_dir.name}/{config.artifact_name}", "python model"
    return None


def untrusted_code(spec: EngineSpec, trusted_roots: tuple[Path, ...]) -> str | None:
    """Why ``spec``'s python code may not run from ``trusted_roots``, or None when it may.

    The model directory, the version directory and the resolved code file must all lie
    inside one trusted root: a version registered as the root itself (or as a file directly
    in it) would otherwise take its handler from the root's parent.
    """
    source = handler_source(spec)
    if source is None:
        return None
    model_dir, relative, what = source
    model_dir = model_dir.resolve()
    code = (model_dir / relative).resolve()
    version_dir = spec.version_dir.resolve()
    for root in trusted_roots:
        root = root.resolve()
        if all(path.is_relative_to(root) for path in (model_dir, version_dir, code)):
            return None
    roots = ", ".join(str(r) for r in trusted_roots) or "none configured"
    return (
        f"{what} {code} (model directory {model_dir}) is not inside a trusted repository "
        f"(--trusted-repository: {roots}); python code runs only from there"
    )


def import_handler(path: Path, model: str, version: str) -> ModuleType:
    """Import the file at ``path`` under a fresh, unique module name."""
    tag = re.sub(r"\W", "_", f"{model}_{version}")
    name = f"_shunter_handler_{tag}_{next(_module_ids)}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise EngineLoadError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered while it executes so dataclasses and typing in the handler can find it.
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise EngineLoadError(f"{path}: handler failed to import: {exc!r}") from exc
    return module


class HandlerEngine:
    """Runs a handler's preprocess/postprocess (or its infer) around an inner engine."""

    def __init__(self, spec: EngineSpec, inner: Engine | None):
        self.spec = spec
        self._inner = inner
        self._module: ModuleType | None = None
        self._preprocess: Callable[[Tensors], Tensors] | None = None
        self._postprocess: Callable[..., Tensors] | None = None
        self._postprocess_takes_inputs = False
        self._infer: Callable[[Tensors], Tensors] | None = None
        self._what = f"handler of {spec.model}/{spec.version}"

    def load(self) -> None:
        source = handler_source(self.spec)
        if source is None:
            raise EngineLoadError(f"{self.spec.model}/{self.spec.version}: no handler configured")
        model_dir, relative, what = source
        path = resolve_in_model_dir(model_dir, relative, what)
        module = import_handler(path, self.spec.model, self.spec.version)
        try:
            self._bind(module, path)
            hook = getattr(module, "load", None)
            if callable(hook):
                try:
                    hook(model_dir.resolve())
                except Exception as exc:
                    raise EngineLoadError(f"{path}: handler load() failed: {exc!r}") from exc
            if self._inner is not None:
                self._inner.load()
        except BaseException:
            sys.modules.pop(module.__name__, None)
            raise
        self._module = module
        logger.info("loaded %s from %s", self._what, path)

    def warmup(self) -> None:
        run_warmup(self.infer, warmup_inputs(self.spec.config.inputs, self.spec.config.max_batch_size), self._what)

    def infer(self, inputs: Tensors) -> Tensors:
        if self._module is None:
            raise EngineError(f"{self.spec.model}/{self.spec.version} is not loaded")
        rows = batch_rows(inputs, self.spec.config.max_batch_size > 0)
        tensors = inputs
        if self._preprocess is not None:
            tensors = self._preprocess(inputs)
            if not isinstance(tensors, dict):
                raise EngineError(f"{self._what}: preprocess returned {type(tensors).__name__}, expected a dict")
        if self._inner is not None:
            outputs = self._inner.infer(tensors)
        else:
            assert self._infer is not None
            outputs = self._infer(tensors)
        if self._postprocess is not None:
            if self._postprocess_takes_inputs:
                outputs = self._postprocess(outputs, tensors)
            else:
                outputs = self._postprocess(outputs)
        return collect_outputs(outputs, self.spec.config.outputs, rows, self._what)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        if self._module is not None:
            sys.modules.pop(self._module.__name__, None)
            self._module = None

    def _bind(self, module: ModuleType, path: Path) -> None:
        self._preprocess = _callable(module, "preprocess", path)
        self._postprocess = _callable(module, "postprocess", path)
        if self._postprocess is not None:
            try:
                count = len(inspect.signature(self._postprocess).parameters)
            except (TypeError, ValueError):
                count = 0
            self._postprocess_takes_inputs = count >= 2
        self._infer = _callable(module, "infer", path)
        if self._inner is None and self._infer is None:
            raise EngineLoadError(f"{path}: a python-backend model must define infer(inputs) -> outputs")
        if self._inner is not None and self._preprocess is None and self._postprocess is None:
            logger.warning("%s defines neither preprocess nor postprocess", path)


def _callable(module: ModuleType, name: str, path: Path) -> Callable[..., Tensors] | None:
    value = getattr(module, name, None)
    if value is not None and not callable(value):
        raise EngineLoadError(f"{path}: '{name}' is not callable")
    return value
