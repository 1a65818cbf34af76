"""Which numbers of a request are drift features, and how to pull them out of a batch.

- A numeric input of fixed shape gives one feature per element, named ``input[i]`` by
  its flat index (digits: ``input__0[0]`` .. ``input__0[63]``, one per pixel).
- A numeric input with a variable dimension gives ``input:mean`` and ``input:length``
  (elements per row): positions do not line up across requests, their summary does.
- A BYTES input (text) gives ``input:bytes`` (UTF-8 length) and ``input:words``
  (whitespace-separated words), per row, averaged over the row's items. For a text model
  these are the numbers that move when the traffic changes (another language, longer
  documents, truncated or empty inputs) and they cost no tokeniser; the output
  embeddings of minilm are L2-normalised, so their norm is 1 by construction and carries
  no signal (its NaN/Inf counters still catch a broken model).
- BF16 inputs are not monitored (numpy has no native type for them).

At most ``max_features`` features per version: when there are more candidates, features
are taken evenly spaced over the candidate list (so a 28x28 image keeps a grid of pixels
across the whole image rather than its first rows), always keeping the first and last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Protocol

import numpy as np

_NUMERIC = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
}


class TensorLike(Protocol):
    name: str
    datatype: str

    @property
    def shape(self) -> Sequence[int]: ...


@dataclass(frozen=True, slots=True)
class _Source:
    """Where one input's features come from: element indices, or one of the summaries."""

    input: str
    datatype: str
    #: "values" (flat element indices in ``index``), "summary" (mean, length) or "text".
    kind: str
    index: np.ndarray
    names: tuple[str, ...]


class FeaturePlan:
    """The drift features of one model version and their extraction from named arrays."""

    def __init__(self, sources: list[_Source]) -> None:
        self._sources = sources
        self.names: tuple[str, ...] = tuple(n for s in sources for n in s.names)

    def __len__(self) -> int:
        return len(self.names)

    def extract(self, inputs: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """One float64 row of features per request row: shape (rows, features)."""
        columns: list[np.ndarray] = []
        for source in self._sources:
            array = np.asarray(inputs[source.input])
            flat = array.reshape(rows, -1)
            if source.kind == "values":
                picked = flat if source.index.size == flat.shape[1] else flat[:, source.index]
                columns.append(picked.astype(np.float64, copy=False))
            elif source.kind == "summary":
                if flat.shape[1] == 0:
                    means = np.zeros(rows)
                else:
                    means = flat.astype(np.float64, copy=False).mean(axis=1)
                lengths = np.full(rows, float(flat.shape[1]))
                columns.append(np.stack([means, lengths], axis=1))
            else:
                columns.append(_text_features(flat))
        return np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]


def _text_features(items: np.ndarray) -> np.ndarray:
    """(rows, items) of bytes/str -> (rows, 2): mean UTF-8 length, mean word count."""
    rows, per_row = items.shape
    out = np.zeros((rows, 2))
    for r in range(rows):
        total_bytes = total_words = 0
        for item in items[r]:
            data = item.encode() if isinstance(item, str) else bytes(item)
            total_bytes += len(data)
            total_words += len(data.split())
        if per_row:
            out[r] = (total_bytes / per_row, total_words / per_row)
    return out


def plan_features(inputs: Sequence[TensorLike], max_features: int) -> FeaturePlan:
    """The features of a signature's inputs, capped at ``max_features`` (see the module doc)."""
    candidates: list[tuple[int, str, int]] = []  # (input position, feature name, flat index or -1)
    kinds: dict[int, str] = {}
    for pos, spec in enumerate(inputs):
        shape = list(spec.shape)
        if spec.datatype == "BYTES":
            kinds[pos] = "text"
            candidates += [(pos, f"{spec.name}:bytes", -1), (pos, f"{spec.name}:words", -1)]
        elif spec.datatype not in _NUMERIC:
            continue
        elif -1 in shape:
            kinds[pos] = "summary"
            candidates += [(pos, f"{spec.name}:mean", -1), (pos, f"{spec.name}:length", -1)]
        else:
            kinds[pos] = "values"
            candidates += [(pos, f"{spec.name}[{i}]", i) for i in range(prod(shape))]
    if len(candidates) > max_features:
        keep = np.unique(np.linspace(0, len(candidates) - 1, max_features).round().astype(int))
        chosen = [candidates[i] for i in keep]
        # A summary or text input keeps both of its features or neither (extraction is per input).
        chosen = [c for c in chosen if kinds[c[0]] == "values" or sum(d[0] == c[0] for d in chosen) == 2]
    else:
        chosen = candidates
    sources = []
    for pos, spec in enumerate(inputs):
        mine = [c for c in chosen if c[0] == pos]
        if not mine:
            continue
        sources.append(_Source(
            input=spec.name,
            datatype=spec.datatype,
            kind=kinds[pos],
            index=np.array([c[2] for c in mine], dtype=np.intp),
            names=tuple(c[1] for c in mine),
        ))
    return FeaturePlan(sources)
