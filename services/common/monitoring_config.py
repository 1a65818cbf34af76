"""The ``monitoring:`` block of a model's config.yaml (issue 13 §3–4).

```yaml
monitoring:
  outputs: {output__0: classification}   # or regression, embedding
  drift:                                  # all optional; these are the defaults
    window_s: 60          # tumbling window the workers count in (aligned on the wall clock)
    bins: 10              # quantile bins per feature, from the reference sample
    max_features: 128     # features per version; wider inputs are sampled evenly
    min_rows: 100         # a window with fewer rows is not scored
    method: psi           # the statistic that flags a feature: psi | js | ks
    psi: [0.1, 0.25]      # [warn, drift] thresholds on the statistic, not on a p-value
    js: [0.1, 0.2]        # Jensen-Shannon distance (base 2, in 0..1)
    ks: [0.1, 0.2]        # binned Kolmogorov-Smirnov: largest gap between the two CDFs
```

Kept apart from model_config.py so the monitoring keys live in one place; model_config
only holds the field and checks that the named outputs exist.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

OutputKind = Literal["classification", "regression", "embedding"]
DriftMethod = Literal["psi", "js", "ks"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _bands(value: tuple[float, float]) -> tuple[float, float]:
    warn, drift = value
    if not 0 < warn <= drift:
        raise ValueError(f"thresholds are [warn, drift] with 0 < warn <= drift, got [{warn}, {drift}]")
    return value


class DriftConfig(_Strict):
    enabled: bool = True
    window_s: float = Field(default=60.0, gt=0, le=86_400)
    bins: int = Field(default=10, ge=2, le=50)
    max_features: int = Field(default=128, ge=1, le=1024)
    min_rows: int = Field(default=100, ge=1)
    method: DriftMethod = "psi"
    psi: tuple[float, float] = (0.1, 0.25)
    js: tuple[float, float] = (0.1, 0.2)
    ks: tuple[float, float] = (0.1, 0.2)

    @field_validator("psi", "js", "ks")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _bands(value)

    def thresholds(self) -> dict[str, tuple[float, float]]:
        return {"psi": self.psi, "js": self.js, "ks": self.ks}


class MonitoringConfig(_Strict):
    #: Output name -> what it holds; only these outputs are watched.
    outputs: dict[str, OutputKind] = Field(default_factory=dict)
    drift: DriftConfig = Field(default_factory=DriftConfig)


def check_outputs(monitoring: MonitoringConfig, outputs: dict[str, list[int]]) -> None:
    """Raise ValueError naming a monitored output the model does not have, or a
    classification output without a fixed number of classes (output name -> shape)."""
    unknown = sorted(set(monitoring.outputs) - set(outputs))
    if unknown:
        raise ValueError(
            f"monitoring.outputs names {', '.join(repr(n) for n in unknown)}, which the model does not "
            f"output (outputs: {', '.join(outputs)})"
        )
    for name, kind in monitoring.outputs.items():
        if kind == "classification" and -1 in outputs[name]:
            raise ValueError(
                f"monitoring.outputs.{name}: classification needs a fixed number of classes, but the "
                f"output's shape is {outputs[name]}"
            )
