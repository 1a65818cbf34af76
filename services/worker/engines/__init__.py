"""Engines: one object per model-version instance, behind the Engine protocol (base.py).

``create_engine(spec)`` picks the class for ``spec.config.backend`` and imports its
library only then, so a worker without torch can still serve ONNX models and the router
never pays for any of them. When the config names a handler, the engine comes wrapped in
a HandlerEngine (python_handler.py) whose preprocess/postprocess run around it; the inner
engine then speaks ``engine_inputs``/``engine_outputs`` when those are given.

Usage (the worker does this once per instance, on that instance's thread)::

    engine = create_engine(EngineSpec(model, version, version_dir, config))
    engine.load()      # EngineLoadError: refuse the version
    engine.warmup()    # EngineLoadError too: it cannot run one batch
    outputs = engine.infer({"input__0": batch})   # named arrays, rows first
    engine.close()
"""

from __future__ import annotations

import importlib

from services.worker.engines.base import Engine, EngineLoadError, EngineSpec

__all__ = ["Engine", "EngineLoadError", "EngineSpec", "create_engine"]

#: backend -> (module, class) implementing it; each class takes (spec, inputs, outputs).
_BACKENDS: dict[str, tuple[str, str]] = {
    "torchscript": ("services.worker.engines.torchscript", "TorchScriptEngine"),
    "torch_export": ("services.worker.engines.torch_export", "TorchExportEngine"),
    "onnx": ("services.worker.engines.onnx", "OnnxEngine"),
    "tensorrt": ("services.worker.engines.tensorrt", "TensorRTEngine"),
}


def create_engine(spec: EngineSpec) -> Engine:
    """An unloaded engine for one instance of ``spec``; call load() and warmup() next.

    Raises EngineLoadError when the backend's library is missing or the config asks for
    something the backend cannot do (engine tensors without a handler).
    """
    config = spec.config
    from services.worker.engines.python_handler import HandlerEngine

    if config.backend == "python":
        return HandlerEngine(spec, inner=None)
    if config.handler is None and (config.engine_inputs or config.engine_outputs):
        raise EngineLoadError(f"{spec.model}/{spec.version}: engine_inputs/engine_outputs need a handler to convert")
    module_name, class_name = _BACKENDS[config.backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineLoadError(f"backend {config.backend} is not available in this worker: {exc}") from exc
    inputs = config.engine_inputs or config.inputs
    outputs = config.engine_outputs or config.outputs
    engine: Engine = getattr(module, class_name)(spec, inputs, outputs)
    if config.handler is not None:
        return HandlerEngine(spec, inner=engine)
    return engine
