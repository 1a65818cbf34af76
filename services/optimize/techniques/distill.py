"""Knowledge distillation into a narrower student, and the label fine-tuning pruning uses.

The student is the teacher's graph less ``depth`` of its square hidden layers (the
last ones; see ``drop_square_layers``) and with every hidden linear layer shrunk to
``width`` of its neurons (the strongest ones by L2 norm, as structured pruning picks them, which gives
the student a warm start), or, with ``arch=NAME``, the module returned by ``student(config)``
in ``NAME.py`` from the operator's ``--trusted-dir`` (operator code, imported like a
handler, never from the eval data or the registry). It is then trained on the transfer set with the usual recipe
(Hinton et al. 2015): ``alpha * KL(softmax(t/T) || softmax(s/T)) * T**2 + (1 - alpha) *
cross-entropy(s, labels)``; without labels only the soft term is used. A model whose
outputs are probabilities (rows summing to 1, digits' softmax) has its log taken as the
logits, which softmax(·/T) treats exactly as the pre-softmax values. Seeded: the same
spec, data and seed give the same student.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

from services.optimize.errors import TechniqueNotApplicable
from services.optimize.techniques.base import Built, Context, parameter_count, save_torchscript, torch_config
from services.optimize.techniques.torch_quant_prune import drop_square_layers, linear_pairs, shrink_pair

BATCH_ROWS = 64


def distill(ctx: Context, out_dir: Path, width: float, epochs: int, temperature: float, alpha: float,
            lr: float, arch: str | None = None, depth: int = 0) -> Built:
    teacher = ctx.eager()
    before = parameter_count(teacher)
    inputs = _tensors(ctx)
    with torch.no_grad():
        teacher_out = _first(teacher(*inputs))
        teacher_logits = as_logits(teacher_out)
    torch.manual_seed(ctx.seed)  # the student's initial weights are part of what the seed fixes
    if arch is not None:
        student: nn.Module = _Answering(load_student(ctx, arch), softmax=is_probabilities(teacher_out))
        described = f"student: {arch} from {ctx.trusted_dir}"
    else:
        if not 0 < width <= 1:
            raise TechniqueNotApplicable(f"distill: width must be in (0, 1], got {width}")
        graph = cast(fx.GraphModule, ctx.eager())
        student = graph
        dropped = drop_square_layers(graph, depth) if depth else 0
        if depth and not dropped:
            raise TechniqueNotApplicable("distill: depth needs a hidden layer as wide in as out between two others")
        pairs = linear_pairs(graph)
        if not pairs and width < 1:
            raise TechniqueNotApplicable("distill: no hidden linear layer to narrow (the width shrink needs an MLP)")
        if width < 1:
            for producer, consumer in pairs:
                shrink_pair(graph, producer, consumer, 1 - width)
        described = f"student: hidden layers at {width:.0%} width"
        if dropped:
            described += f", {dropped} hidden layer(s) fewer"
    labels = _labels(ctx)
    if labels is None:
        alpha = 1.0
    generator = torch.Generator().manual_seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    optimiser = torch.optim.Adam(student.parameters(), lr=lr)
    rows = len(teacher_logits)
    student.train()
    for epoch in range(epochs):
        order = torch.randperm(rows, generator=generator)
        for start in range(0, rows, BATCH_ROWS):
            idx = order[start:start + BATCH_ROWS]
            logits = as_logits(_first(student(*(t[idx] for t in inputs))))
            soft = F.kl_div(F.log_softmax(logits / temperature, dim=1),
                            F.softmax(teacher_logits[idx] / temperature, dim=1),
                            reduction="batchmean") * temperature**2
            loss = alpha * soft
            if labels is not None and alpha < 1:
                loss = loss + (1 - alpha) * F.cross_entropy(logits, labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        ctx.progress(epoch + 1, epochs, "distill")
    student.eval()
    save_torchscript(student, ctx.sample(), out_dir)
    after = parameter_count(torch.jit.load(str(out_dir / "model.pt")))
    notes = [f"{described}, {epochs} epochs, T={temperature}, alpha={alpha}, seed {ctx.seed}, {rows} transfer rows"]
    if ctx.transfer_is_eval:
        notes.append("trained on the eval inputs (no --transfer): its figures are optimistic")
    return Built(torch_config(ctx), {"parameters_before": before, "parameters": after}, notes)


def load_student(ctx: Context, arch: str) -> nn.Module:
    """``student(config)`` from ``<trusted_dir>/<arch>.py``; the path must stay inside the directory."""
    from services.worker.engines.base import EngineLoadError
    from services.worker.engines.python_handler import import_handler, resolve_in_model_dir

    if ctx.trusted_dir is None:
        raise TechniqueNotApplicable(f"distill:arch={arch} needs --trusted-dir DIR (the operator's student modules)")
    try:
        path = resolve_in_model_dir(ctx.trusted_dir, f"{arch}.py", "student architecture")
        module = import_handler(path, "student", arch)
    except EngineLoadError as exc:
        raise TechniqueNotApplicable(f"distill:arch={arch}: {exc}") from None
    build = getattr(module, "student", None)
    if not callable(build):
        raise TechniqueNotApplicable(f"{path}: defines no student(config) -> torch.nn.Module")
    student = build(ctx.original.config)
    if not isinstance(student, nn.Module):
        raise TechniqueNotApplicable(f"{path}: student(config) returned {type(student).__name__}, not a torch module")
    return student


class _Answering(nn.Module):
    """A student that answers like the teacher: softmax on top when the teacher gives probabilities."""

    def __init__(self, inner: nn.Module, softmax: bool):
        super().__init__()
        self.inner = inner
        self.softmax = softmax

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = _first(self.inner(*args))
        if self.softmax and not is_probabilities(out.detach()):
            return torch.softmax(out, dim=1)
        return out


def train_on_labels(ctx: Context, module: nn.Module, epochs: int, lr: float = 1e-3) -> str:
    """Fine-tune ``module`` on the transfer set's labels (cross-entropy); returns a note."""
    labels = _labels(ctx)
    if labels is None:
        raise TechniqueNotApplicable("finetune needs labels (--labels or --label-column)")
    inputs = _tensors(ctx)
    generator = torch.Generator().manual_seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), BATCH_ROWS):
            idx = order[start:start + BATCH_ROWS]
            loss = F.cross_entropy(as_logits(_first(module(*(t[idx] for t in inputs)))), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        ctx.progress(epoch + 1, epochs, "finetune")
    module.eval()
    suffix = " (on the eval set: optimistic)" if ctx.transfer_is_eval else ""
    return f"fine-tuned {epochs} epochs on {len(labels)} labelled rows{suffix}"


def is_probabilities(array: np.ndarray | torch.Tensor) -> bool:
    """Rows of non-negative numbers summing to 1: a softmax output, not logits."""
    values = torch.as_tensor(array, dtype=torch.float64)
    if values.dim() != 2 or values.shape[1] < 2:
        return False
    return bool((values >= -1e-6).all() and torch.allclose(values.sum(dim=1), torch.ones(len(values),
                                                           dtype=torch.float64), atol=1e-3))


def as_logits(output: torch.Tensor) -> torch.Tensor:
    if is_probabilities(output.detach()):
        return torch.log(output.clamp_min(1e-12))
    return output


def _first(result: object) -> torch.Tensor:
    if isinstance(result, tuple | list):
        return result[0]
    if isinstance(result, dict):
        return next(iter(result.values()))
    return result  # type: ignore[return-value]


def _tensors(ctx: Context) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(ctx.transfer.inputs[t.name])) for t in ctx.original.config.inputs]


def _labels(ctx: Context) -> torch.Tensor | None:
    labels = ctx.transfer.labels
    if labels is None:
        return None
    if labels.dtype.kind not in "iu":
        raise TechniqueNotApplicable("training on labels needs integer class labels")
    return torch.from_numpy(labels.astype(np.int64))
