"""Read a Triton-style model repository: ``DIR/<model>/config.yaml`` and ``DIR/<model>/<N>/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.errors import ModelConfigError
from services.common.model_config import ModelConfig, load_version_config


@dataclass(frozen=True)
class RepositoryVersion:
    model: str
    version: str
    version_dir: Path
    config: ModelConfig


def scan_repository(root: Path, only: set[str] | None = None) -> list[RepositoryVersion]:
    """Every version of every model (or of ``only``), configs validated; fails on the first bad one."""
    if not root.is_dir():
        raise ModelConfigError(f"{root}: model repository not found")
    found: list[RepositoryVersion] = []
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
    if only is not None:
        missing = sorted(only - set(names))
        if missing:
            raise ModelConfigError(f"{root}: no model(s) named {', '.join(missing)} (found: {', '.join(names)})")
        names = [n for n in names if n in only]
    for name in names:
        model_dir = root / name
        versions = sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
        if not versions:
            raise ModelConfigError(f"{model_dir}: no version directories (e.g. {model_dir}/1/)")
        for version in versions:
            config = load_version_config(model_dir, version)
            found.append(RepositoryVersion(name, version, model_dir / version, config))
    return found
