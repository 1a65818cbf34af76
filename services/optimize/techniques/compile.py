"""Compilation: the same network in another serving format.

- compile:torchscript: traced, frozen and ``torch.jit.optimize_for_inference`` (constant
  folding, conv/linear fusions where the CPU has them).
- compile:torch_export: ``torch.export`` with a dynamic batch dimension up to
  max_batch_size (``model.pt2``, the torch_export engine).
- compile:onnx: ONNX (TorchScript-based exporter: the dynamo one needs onnxscript, which
  the lock does not carry), then ONNX Runtime's offline graph optimisation at the *basic*
  level (constant folding, redundant-node removal), written with
  ``optimized_model_filepath``. Basic is the level whose output is portable across
  machines; the onnx engine applies the extended and layout optimisations at load. An
  ONNX original gets the offline optimisation only.
- fp16: weights and activations in half precision on CUDA; skipped without a GPU.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from services.optimize.errors import TechniqueSkipped
from services.optimize.lift import TORCH_BACKENDS
from services.optimize.source import candidate_config
from services.optimize.techniques.base import Built, Context, save_torchscript, torch_config


def compile_torchscript(ctx: Context, out_dir: Path) -> Built:
    save_torchscript(ctx.eager(), ctx.sample(), out_dir, freeze=True)
    return Built(torch_config(ctx), notes=["torch.jit.trace + freeze + optimize_for_inference"])


def compile_torch_export(ctx: Context, out_dir: Path) -> Built:
    import torch

    module = ctx.eager()
    max_batch = ctx.original.config.max_batch_size
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    sample = ctx.sample()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, sample, dynamic_shapes=tuple({0: batch} for _ in sample))
    torch.export.save(program, str(out_dir / "model.pt2"))
    return Built(torch_config(ctx, "torch_export"), notes=[f"torch.export, batch dimension 1..{max_batch}"])


def export_onnx(ctx: Context, path: Path) -> None:
    """The torch original as ONNX with a dynamic batch dimension, named like the config."""
    import torch

    config = ctx.original.config
    inputs = [t.name for t in config.inputs]
    outputs = [t.name for t in config.outputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ctx.eager(), ctx.sample(), str(path), dynamo=False, input_names=inputs, output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs}, opset_version=17,
        )


def onnx_source(ctx: Context, out_dir: Path) -> Path:
    """An ONNX file for the original: its own artifact, or an export of the torch one."""
    if ctx.backend == "onnx":
        return ctx.original.artifact_path
    if ctx.backend not in TORCH_BACKENDS:
        from services.optimize.errors import TechniqueNotApplicable

        raise TechniqueNotApplicable(f"cannot make ONNX from backend {ctx.backend}")
    path = out_dir / "exported.onnx"
    export_onnx(ctx, path)
    return path


def compile_onnx(ctx: Context, out_dir: Path) -> Built:
    import onnxruntime as ort

    source = onnx_source(ctx, out_dir)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_dir / "model.onnx")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    if source.parent == out_dir:
        source.unlink()
    notes = ["ONNX Runtime offline graph optimisation (basic level; the engine applies the rest at load)"]
    if ctx.backend != "onnx":
        notes.insert(0, "exported with torch.onnx.export (opset 17, dynamic batch)")
    return Built(candidate_config(ctx.original, backend="onnx"), notes=notes)


def fp16(ctx: Context, out_dir: Path) -> Built:
    import torch

    if not torch.cuda.is_available():
        raise TechniqueSkipped("fp16: no CUDA device here (half precision only pays on a GPU); skipped")
    return build_half(ctx, out_dir, "cuda")


def build_half(ctx: Context, out_dir: Path, device: str) -> Built:
    """The network in half precision on ``device``, taking and returning float32 like the
    original. ``fp16`` calls it for CUDA; the tests call it for the CPU, where torch also
    has half kernels, to check everything but the GPU itself."""
    import torch

    if ctx.backend not in TORCH_BACKENDS:
        raise TechniqueSkipped(f"fp16 for backend {ctx.backend} is not built by this tool")
    module = ctx.eager().to(device).half()

    class _Cast(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(*(a.half() for a in args)).float()

    sample = tuple(t.to(device) for t in ctx.sample())
    save_torchscript(_Cast(module), sample, out_dir)
    return Built(candidate_config(ctx.original, backend="torchscript", device=device),
                 notes=[f"half-precision weights and activations on {device}, float32 at the edges"])


def copy_handler_files(ctx: Context, model_dir: Path) -> None:
    """Give a candidate's model directory the original's handler and files beside it."""
    handler = ctx.original.config.handler
    if handler is None:
        return
    for item in ctx.original.model_dir.iterdir():
        if item.is_file() and not (model_dir / item.name).exists():
            shutil.copy2(item, model_dir / item.name)
