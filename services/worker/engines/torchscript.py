"""TorchScript engine: a ``torch.jit.save`` archive (``model.pt``) on torch_support's runner.

TorchScript is deprecated upstream but is still the format DESIGN §3 serves; the
deprecation warning is silenced here once rather than printed on every load.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from services.worker.engines.torch_archives import check_torchscript_module, read_torchscript_archive
from services.worker.engines.torch_support import TorchEngineBase

warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)


class TorchScriptEngine(TorchEngineBase):
    """A ``torch.jit.save`` archive (``model.pt``), loaded straight onto the configured device."""

    kind = "TorchScript module"

    def _load_module(self, path: Path, device: torch.device) -> tuple[Callable[..., Any], list[str]]:
        # Loading runs TorchScript __setstate__ code: its text is checked first, then every
        # method's graph once it is loaded.
        module = torch.jit.load(read_torchscript_archive(str(path)), map_location=device)
        check_torchscript_module(module, str(path))
        module.eval()
        arg_names = [arg.name for arg in module.forward.schema.arguments][1:]  # drop self
        return module, arg_names
