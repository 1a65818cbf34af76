"""ONNX Runtime int8 quantisation of an ONNX model (``onnxruntime.quantization``).

- quantize-dynamic on an ONNX original: ``quantize_dynamic`` (int8 per-channel weights, which
  keep MiniLM's mean cosine at 0.993 where per-tensor gives 0.967; activations
  quantised per batch at run time: MatMulInteger / DynamicQuantizeLinear nodes).
- quantize-static: ``quantize_static`` in QDQ format (QuantizeLinear / DequantizeLinear
  pairs around each quantised MatMul / Gemm / Conv), activations calibrated with MinMax on a slice of the
  eval set (``calibrate=ROWS``, default 128) fed through the model's handler when it has
  one, so the calibration sees exactly the tensors the engine will. A torch original is
  exported to ONNX first (compile.py) and served by the onnx engine.

Both run ONNX Runtime's shape inference and graph pre-processing first
(``quant_pre_process``), which the ORT documentation recommends before quantising.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from services.optimize.source import candidate_config
from services.optimize.techniques.base import Built, Context
from services.optimize.techniques.compile import onnx_source

logger = logging.getLogger(__name__)

CALIBRATION_BATCH = 16
#: Ops quantize-static quantises. ORT's default takes every op it can (Add, Softmax, Gather...),
#: which on MiniLM leaves a mean cosine of 0.41 to the original; the matrix products alone
#: give 0.94 (and all of digits' weights).
STATIC_OPS = ("MatMul", "Gemm", "Conv")


def _preprocessed(ctx: Context, source: Path, out_dir: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = out_dir / "preprocessed.onnx"
    # Symbolic shape inference first (it helps transformer graphs); graphs it cannot follow
    # (MiniLM's Min(512, tokens) broadcast) get the ONNX shape inference only.
    for skip_symbolic in (False, True):
        try:
            # ORT's symbolic shape inference saves a fallback copy of a large model
            # (sym_shape_infer_temp.onnx plus external data) into the working directory.
            with _quiet(), contextlib.chdir(out_dir):
                quant_pre_process(str(source), str(path), skip_symbolic_shape=skip_symbolic)
            return path
        except Exception as exc:
            logger.info("quant_pre_process (skip_symbolic_shape=%s) failed: %s", skip_symbolic, exc)
    return source


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantisation tools warn on the root logger; the report says what happened."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    for name in ("onnxruntime.tools.symbolic_shape_infer",):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_dynamic_onnx(ctx: Context, out_dir: Path) -> Built:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = onnx_source(ctx, out_dir)
    prepared = _preprocessed(ctx, source, out_dir)
    with _quiet():
        quantize_dynamic(str(prepared), str(out_dir / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    _cleanup(out_dir)
    props = int8_summary(out_dir / "model.onnx")
    notes = ["onnxruntime.quantization.quantize_dynamic (QInt8 per-channel weights, activations at run time)"]
    return Built(candidate_config(ctx.original, backend="onnx"), props, notes)


def quantize_static_onnx(ctx: Context, out_dir: Path, calibrate_rows: int = 128) -> Built:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    source = onnx_source(ctx, out_dir)
    prepared = _preprocessed(ctx, source, out_dir)
    rows = min(calibrate_rows, ctx.evalset.rows)
    batches = list(calibration_batches(ctx, rows))

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with _quiet():
        quantize_static(
            str(prepared), str(out_dir / "model.onnx"), _Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            per_channel=True, op_types_to_quantize=list(STATIC_OPS),
        )
    _cleanup(out_dir)
    props = int8_summary(out_dir / "model.onnx")
    props["calibration_rows"] = rows
    notes = [f"onnxruntime.quantization.quantize_static, QDQ, per-channel weights, MinMax calibration on the "
             f"first {rows} eval rows"]
    return Built(candidate_config(ctx.original, backend="onnx"), props, notes)


def calibration_batches(ctx: Context, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The engine's own input tensors for the first ``rows`` eval rows, a batch at a time."""
    config = ctx.original.config
    preprocess = None
    if config.handler is not None:
        from services.worker.engines.python_handler import import_handler, resolve_in_model_dir

        path = resolve_in_model_dir(ctx.original.model_dir, config.handler, "handler")
        module = import_handler(path, ctx.original.model, ctx.original.version)
        if callable(getattr(module, "load", None)):
            module.load(ctx.original.model_dir.resolve())
        preprocess = getattr(module, "preprocess", None)
    engine_inputs = config.engine_inputs or config.inputs
    for start in range(0, rows, CALIBRATION_BATCH):
        batch = ctx.evalset.slice(start, min(rows, start + CALIBRATION_BATCH))
        tensors = preprocess(batch) if preprocess is not None else batch
        yield {t.name: np.asarray(tensors[t.name]) for t in engine_inputs}


def int8_summary(path: Path) -> dict[str, int]:
    """Counts read back from the quantised graph: QDQ / integer nodes and int8 initializers."""
    import onnx

    model = onnx.load(str(path))
    ops = [node.op_type for node in model.graph.node]
    int8 = sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {
        "quantize_linear_nodes": ops.count("QuantizeLinear"),
        "dequantize_linear_nodes": ops.count("DequantizeLinear"),
        "integer_matmul_nodes": ops.count("MatMulInteger") + ops.count("ConvInteger"),
        "int8_initializers": int8,
    }


def _cleanup(out_dir: Path) -> None:
    for name in ("preprocessed.onnx", "exported.onnx", "preprocessed-inferred.onnx"):
        (out_dir / name).unlink(missing_ok=True)
