"""The version being optimised: its artifact, config and where it came from.

Two sources, both loading exactly what a worker would: a model-repository directory
(``<repo>/<model>/<version>/`` with the merged config.yaml, as a standalone worker reads
it), or a registered version, fetched and sha256-verified by the worker's own
``prepare_version`` (a mismatch is refused before anything is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.artifacts import ArtifactError
from services.common.errors import ModelConfigError
from services.common.model_config import ModelConfig, parse_model_config, version_config_text
from services.optimize.errors import OptimizeError


@dataclass(frozen=True)
class Original:
    """One model version as a worker would load it."""

    model: str
    version: str
    #: The directory an engine loads from (holds ``config.artifact_name``; the handler's too).
    version_dir: Path
    config: ModelConfig
    #: Where it came from, for the report (a path or ``registry HOST:PORT``).
    origin: str

    @property
    def artifact_path(self) -> Path:
        return self.version_dir / self.config.artifact_name

    @property
    def model_dir(self) -> Path:
        """Where a handler module lives (the worker looks one level up from the version)."""
        return self.version_dir.parent

    def config_dict(self) -> dict[str, Any]:
        """The config as plain data, for writing a candidate's config.yaml."""
        return self.config.model_dump(exclude_none=True)


def from_repository(repository: Path, model: str, version: str) -> Original:
    model_dir = repository / model
    version_dir = model_dir / version
    if not version_dir.is_dir():
        raise OptimizeError(f"model repository {repository}: no version directory {version_dir}")
    try:
        text, source = version_config_text(model_dir, version)
        config = parse_model_config(text, source)
    except ModelConfigError as exc:
        raise OptimizeError(str(exc)) from None
    if not (version_dir / config.artifact_name).is_file():
        raise OptimizeError(f"{model} version {version}: artifact {version_dir / config.artifact_name} is missing")
    return Original(model, version, version_dir, config, str(version_dir))


def from_registered(version: Any, registry: str) -> Original:
    """An Original from a registry ``ModelVersion``, fetched and verified as a worker does."""
    from services.worker.cluster import prepare_version

    try:
        version_dir, config = prepare_version(version)
    except ArtifactError as exc:
        raise OptimizeError(f"{version.model} version {version.version}: {exc}") from None
    except ModelConfigError as exc:
        raise OptimizeError(str(exc)) from None
    return Original(version.model, version.version, version_dir, config, f"registry {registry}")


def candidate_config(original: Original, **changes: Any) -> dict[str, Any]:
    """The original's config with ``changes`` applied (backend, artifact, ...), as plain data."""
    data = original.config_dict()
    data.update(changes)
    if "backend" in changes and "artifact" not in changes:
        data.pop("artifact", None)
    return data


def write_config(directory: Path, data: dict[str, Any]) -> ModelConfig:
    """Write ``config.yaml`` into ``directory`` and return it parsed (so a bad one fails here)."""
    text = yaml.safe_dump(data, sort_keys=False)
    path = directory / "config.yaml"
    path.write_text(text)
    return parse_model_config(text, str(path))
