"""What every technique shares: the build context, the result, artifact writers."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.optimize.evalset import EvalSet
from services.optimize.source import Original


@dataclass
class Built:
    """A built candidate: its directory holds config.yaml and the artifact."""

    config: dict[str, Any]
    #: What the technique changed, measured on the artifact (reported, and checked by tests).
    properties: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What a technique may use; the eager module is made once and copied per technique."""

    original: Original
    evalset: EvalSet
    #: Inputs (and labels) to train on: ``--transfer`` if given, else the eval set.
    transfer: EvalSet
    transfer_is_eval: bool
    seed: int = 0
    #: The operator's directory of student architectures (``distill:arch=NAME``), if any.
    trusted_dir: Path | None = None
    #: progress(completed, total, what): techniques that train call it per epoch.
    progress: Callable[[int, int, str], None] = lambda done, total, what: None
    _eager: Any = None

    @property
    def backend(self) -> str:
        return self.original.config.backend

    def sample(self, rows: int = 2) -> tuple[Any, ...]:
        """The first ``rows`` eval rows as torch tensors, in config input order."""
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(self.evalset.inputs[t.name][:rows]))
                     for t in self.original.config.inputs)

    def eager(self) -> Any:
        """A fresh copy of the original as an editable torch module (lift.py)."""
        from services.optimize import lift

        if self._eager is None:
            program = lift.load_program(self.original.artifact_path, self.backend, self.sample())
            self._eager = lift.to_eager(program, [t.name for t in self.original.config.inputs])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree spec pickling notice
            return copy.deepcopy(self._eager)


def save_torchscript(module: Any, sample: tuple[Any, ...], out_dir: Path, freeze: bool = False) -> Path:
    """Trace ``module`` on ``sample`` and save ``model.pt`` (the TorchScript engine loads it)."""
    import torch

    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, sample, check_trace=False)
        if freeze:
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    path = out_dir / "model.pt"
    traced.save(str(path))
    return path


def torch_config(ctx: Context, backend: str = "torchscript") -> dict[str, Any]:
    from services.optimize.source import candidate_config

    return candidate_config(ctx.original, backend=backend)


def parameter_count(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))
