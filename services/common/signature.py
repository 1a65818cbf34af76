"""A model version's signature: what its inputs and outputs look like.

One plain structure, built from a config.yaml (worker) or from the registry's
routing table (router), so both validate requests with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    #: Excludes the batch dimension; -1 means any length.
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: 0 means the model takes no batch dimension.
    max_batch_size: int
    input_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_by_name", {spec.name: spec for spec in self.inputs})
        object.__setattr__(self, "output_names", frozenset(spec.name for spec in self.outputs))

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0
