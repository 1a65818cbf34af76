"""torch.export engine: a ``torch.export.save`` archive (``model.pt2``) run as a module.

Loading such an archive can run code (torch_archives.py lists how), so the archive is
checked member by member first and torch loads the checked bytes. As a second fence the
load runs with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` set: every ``torch.load`` inside it then
uses the weights-only unpickler.
The program must have been exported with positional arguments (``torch.export.export(m,
(x,))``); they are passed in the order of the program's own input names when those are the
config's names. Threads, CUDA handling and the runner are torch_support.py's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from services.worker.engines.torch_archives import read_export_archive
from services.worker.engines.torch_support import TorchEngineBase

_FORCE_SAFE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_env_lock = threading.Lock()


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force ``torch.load(weights_only=True)`` process-wide for the duration.

    Other threads loading at the same moment are forced safe too, which is what this
    process wants anyway; the lock keeps two loads from restoring the variable early.
    """
    with _env_lock:
        previous = os.environ.get(_FORCE_SAFE_ENV)
        os.environ[_FORCE_SAFE_ENV] = "1"
        try:
            yield
        finally:
            if previous is None:
                del os.environ[_FORCE_SAFE_ENV]
            else:
                os.environ[_FORCE_SAFE_ENV] = previous


class TorchExportEngine(TorchEngineBase):
    kind = "torch.export program"

    def _load_module(self, path: Path, device: torch.device) -> tuple[Callable[..., Any], list[str]]:
        archive = read_export_archive(str(path))  # UnsafeArtifact before torch reads a byte
        with _weights_only_loads():
            program = torch.export.load(archive)
        arg_names = list(program.graph_signature.user_inputs)
        module = program.module()
        if device.type != "cpu":
            module = module.to(device)
        return module, [str(name) for name in arg_names]
