"""Register the winning candidate as a new ``staged`` version, its report stored with it.

The artifact is the candidate's directory (config.yaml beside the artifact, handler files
in the directory above, as a worker expects); its sha256 is the directory manifest's
(services/common/artifacts.py), so a worker verifies exactly what was measured. The new
version number is one past the model's highest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common import artifacts
from services.common.errors import NotFound


async def next_version(client: Any, model: str) -> str:
    try:
        found = await client.get_model(model)
    except NotFound:
        return "1"
    return str(max((int(v.version) for v in found.versions), default=0) + 1)


async def register_candidate(client: Any, model: str, version: str, directory: Path, report_text: str) -> Any:
    from services.gen.shunter.registry.v1 import registry_pb2 as rpb

    config_yaml = (directory / "config.yaml").read_text()
    digest = artifacts.sha256_of(directory)
    return await client.register_model_version(
        model, version, artifacts.uri_for(directory), digest, config_yaml, rpb.STAGED, optimize_report=report_text,
    )
