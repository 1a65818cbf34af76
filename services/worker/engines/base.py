"""The one small interface every engine implements.

The batcher hands an engine one batch of named arrays (rows already concatenated along
the batch dimension) and gets named arrays back with the same number of rows. Engines
are synchronous: the worker runs ``infer`` on the engine instance's own executor
thread, never on the event loop. Heavy libraries are imported only inside the module
of the backend that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from services.common.model_config import ModelConfig


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs to load one model version."""

    model: str
    version: str
    #: The version directory (holds the artifact) and its model directory (holds the handler).
    version_dir: Path
    config: ModelConfig

    @property
    def artifact_path(self) -> Path:
        return self.version_dir / self.config.artifact_name


class Engine(Protocol):
    def load(self) -> None:
        """Load the artifact; raise EngineLoadError (with a reason) when it cannot be."""

    def warmup(self) -> None:
        """Run one representative batch so the first request pays no start-up cost."""

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; return every output, each with the batch's row count first."""

    def close(self) -> None:
        """Free what load() took."""


class EngineLoadError(Exception):
    """A model version cannot be loaded (bad artifact, missing file, unsafe content)."""


class UnsafeArtifact(EngineLoadError):
    """The artifact holds something that would run code (or touch files) when loaded.

    Refused for good: loading the same bytes again would be refused the same way.
    """
