"""config.yaml of a model (DESIGN §3): parsed strictly, errors name the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.datatypes import DATATYPES
from services.common.errors import ModelConfigError
from services.common.monitoring_config import MonitoringConfig, check_outputs
from services.common.signature import Signature, TensorSpec

Backend = Literal["torchscript", "torch_export", "onnx", "tensorrt", "python"]

#: Artifact file each backend loads from a version directory, when none is named.
DEFAULT_ARTIFACT: dict[str, str] = {
    "torchscript": "model.pt",
    "torch_export": "model.pt2",
    "onnx": "model.onnx",
    "tensorrt": "model.plan",
    "python": "model.py",
}

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    name: str = Field(min_length=1)
    datatype: str
    shape: list[int]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r} (one of {', '.join(sorted(DATATYPES))})")
        return value

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError(f"dimensions must be positive or -1, got {value}")
        return value


class DynamicBatchingConfig(_Strict):
    max_queue_delay_us: int = Field(default=2000, ge=0, le=10_000_000)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(default=1024, ge=1)

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"preferred batch sizes must be >= 1, got {value}")
        return sorted(set(value))


class ModelConfig(_Strict):
    backend: Backend
    max_batch_size: int = Field(default=0, ge=0)
    inputs: list[TensorConfig] = Field(min_length=1)
    outputs: list[TensorConfig] = Field(min_length=1)
    dynamic_batching: DynamicBatchingConfig | None = None
    #: Concurrent executions of this version (each its own executor thread).
    instances: int = Field(default=1, ge=1, le=64)
    #: Run batches on the worker's event loop instead of the instances' threads: only for
    #: models whose whole batch takes microseconds, where the thread handoff (and the GIL
    #: traffic it brings) costs more than the model. Batches that hold the loop too long
    #: (LOOP_BUDGET_S on average, LOOP_LIMIT_S once, in services/worker/batching/batcher.py)
    #: move the version back to its threads for good.
    run_on_event_loop: bool = False
    device: str = "cpu"
    #: Optional module with preprocess(inputs) / postprocess(outputs), relative to the model dir.
    handler: str | None = None
    #: Artifact file name inside the version directory (default by backend).
    artifact: str | None = None
    #: Engine threads (ONNX Runtime intra-op, torch.set_num_threads); 0 = library default.
    intra_op_threads: int = Field(default=1, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    #: Input tensors the engine itself takes when a handler's preprocess produces different ones.
    engine_inputs: list[TensorConfig] | None = None
    engine_outputs: list[TensorConfig] | None = None
    #: Model-output metrics and input drift (services/common/monitoring_config.py); None: off.
    monitoring: MonitoringConfig | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("cpu", "cuda", "auto") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto (a GPU if there is one), got {value!r}")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        for group in ("inputs", "outputs"):
            names = [t.name for t in getattr(self, group)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {group[:-1]} name(s): {', '.join(dupes)}")
        if self.dynamic_batching is not None:
            if self.max_batch_size == 0:
                raise ValueError("dynamic_batching needs max_batch_size > 0")
            too_big = [s for s in self.dynamic_batching.preferred_batch_sizes if s > self.max_batch_size]
            if too_big:
                raise ValueError(
                    f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}"
                )
        if self.monitoring is not None:
            check_outputs(self.monitoring, {t.name: t.shape for t in self.outputs})
        return self

    @property
    def artifact_name(self) -> str:
        return self.artifact or DEFAULT_ARTIFACT[self.backend]

    def signature(self) -> Signature:
        return Signature(
            inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in self.inputs),
            outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in self.outputs),
            max_batch_size=self.max_batch_size,
        )


def parse_model_config(text: str, source: str) -> ModelConfig:
    """Parse config.yaml text; ``source`` names the file in every error."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{source}: expected a mapping at the top level")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"key '{key}': {err['msg']}")
        raise ModelConfigError(f"{source}: " + "; ".join(problems)) from None


def version_config_text(model_dir: Path, version: str) -> tuple[str, str]:
    """The config.yaml text that applies to one version, and where it came from.

    A version directory may hold its own config.yaml whose top-level keys replace the
    model-level file's (so version 1 can be TorchScript and version 2 ONNX). The merged
    text is what the registry stores for that version.
    """
    model_file = model_dir / "config.yaml"
    version_file = model_dir / version / "config.yaml"
    sources = [p for p in (model_file, version_file) if p.is_file()]
    if not sources:
        raise ModelConfigError(f"{model_file}: missing (every model needs a config.yaml)")
    merged: dict = {}
    for path in sources:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelConfigError(f"{path}: cannot read: {exc}") from None
        if not isinstance(data, dict):
            raise ModelConfigError(f"{path}: expected a mapping at the top level")
        merged.update(data)
    source = " + ".join(str(p) for p in sources)
    if len(sources) == 1:
        return sources[0].read_text(), source
    return yaml.safe_dump(merged, sort_keys=False), source


def load_version_config(model_dir: Path, version: str) -> ModelConfig:
    text, source = version_config_text(model_dir, version)
    return parse_model_config(text, source)
