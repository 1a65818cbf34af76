"""Read a Triton-style model repository: ``DIR/<model>/config.yaml`` and ``DIR/<model>/<N>/``."""

from __future__ import annotations

from collections.abc import Callable
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


def scan_repository(
    root: Path, only: set[str] | None = None, on_bad_model: Callable[[str], None] | None = None
) -> list[RepositoryVersion]:
    """Every version of every model (or of ``only``), configs validated.

    Without ``on_bad_model`` the first bad config raises (``--strict``); with it, a model
    with no versions or a version whose config is invalid is reported there and skipped,
    so one broken model does not stop the others being served.
    """
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
        try:
            if not versions:
                raise ModelConfigError(f"{model_dir}: no version directories (e.g. {model_dir}/1/)")
            for version in versions:
                try:
                    config = load_version_config(model_dir, version)
                except ModelConfigError as exc:
                    if on_bad_model is None:
                        raise
                    on_bad_model(f"{name} version {version}: {exc}")
                    continue
                found.append(RepositoryVersion(name, version, model_dir / version, config))
        except ModelConfigError as exc:
            if on_bad_model is None:
                raise
            on_bad_model(f"{name}: {exc}")
    return found
