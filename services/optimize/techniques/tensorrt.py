"""compile:tensorrt: a TensorRT plan built from ONNX, with optimisation profiles matching
the model's batching config (min 1, opt the largest preferred batch size, max
max_batch_size), as the worker's tensorrt engine expects.

UNVERIFIED: TensorRT cannot be installed in this workplace. The builder is written
against TensorRT's documented Python API (``trt.Builder``, ``create_network`` with
explicit batch, ``trt.OnnxParser``, ``create_optimization_profile``,
``build_serialized_network``) and tested only up to the import, which is skipped with a
clear message where ``tensorrt`` does not import or no CUDA device is present.
"""

from __future__ import annotations

from pathlib import Path

from services.optimize.errors import TechniqueSkipped
from services.optimize.source import candidate_config
from services.optimize.techniques.base import Built, Context
from services.optimize.techniques.compile import onnx_source

WORKSPACE_BYTES = 1 << 30


def compile_tensorrt(ctx: Context, out_dir: Path, fp16: bool = False) -> Built:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TechniqueSkipped(f"compile:tensorrt: TensorRT does not import here ({exc}); skipped") from None
    import torch

    if not torch.cuda.is_available():
        raise TechniqueSkipped("compile:tensorrt: no CUDA device here; skipped")
    source = onnx_source(ctx, out_dir)
    plan = build_plan(trt, source, ctx, fp16)
    (out_dir / "model.plan").write_bytes(plan)
    (out_dir / "exported.onnx").unlink(missing_ok=True)
    return Built(candidate_config(ctx.original, backend="tensorrt", device="cuda"),
                 notes=["TensorRT plan from ONNX (UNVERIFIED: written against the documented API)"])


def profile_shapes(ctx: Context) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape per engine input, from the batching config (-1 dims: 1 / 16 / 128)."""
    config = ctx.original.config
    max_batch = max(config.max_batch_size, 1)
    preferred = config.dynamic_batching.preferred_batch_sizes if config.dynamic_batching else []
    opt_batch = max(preferred) if preferred else max_batch
    shapes = {}
    for spec in config.engine_inputs or config.inputs:
        low = [1 if d == -1 else d for d in spec.shape]
        mid = [16 if d == -1 else d for d in spec.shape]
        high = [128 if d == -1 else d for d in spec.shape]
        shapes[spec.name] = ((1, *low), (opt_batch, *mid), (max_batch, *high))
    return shapes


def build_plan(trt: object, onnx_path: Path, ctx: Context, fp16: bool) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)  # type: ignore[attr-defined]
    builder = trt.Builder(logger)  # type: ignore[attr-defined]
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)  # type: ignore[attr-defined]
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TechniqueSkipped(f"compile:tensorrt: the ONNX parser refused the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)  # type: ignore[attr-defined]
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # type: ignore[attr-defined]
    profile = builder.create_optimization_profile()
    for name, (low, mid, high) in profile_shapes(ctx).items():
        profile.set_shape(name, low, mid, high)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TechniqueSkipped("compile:tensorrt: the builder produced no plan (see TensorRT's log)")
    return bytes(plan)
