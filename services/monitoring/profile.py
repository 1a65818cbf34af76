"""A version's reference profile: fixed bins per feature and the reference counts.

Bins are fixed once, from the reference sample, so every worker counts live traffic into
the same bins and counts can simply be added across workers and compared with the
reference. Per feature the edges are the sample's minimum, its interior quantiles
(``bins`` - 1 of them) and the number just above its maximum, with duplicates removed:
a discrete feature (a pixel that is 0 in 90 % of images) gets fewer, wider bins, and
anything outside the reference range lands in the first or last bin, empty in the
reference, which PSI punishes as it should.

Counting a batch (``BinCounter.count``) is ``searchsorted(edges, x, side="right")`` per
feature and one ``bincount`` over all of them; for a handful of rows, where 128 small
searchsorted calls would cost more than the work, one broadcast comparison against the
padded edge matrix gives the same bins. NaN counts as +Inf: it lands in the last bin,
above the reference's maximum, where it shows as drift.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
from services.monitoring.features import FeaturePlan


class ProfileError(ValueError):
    """A reference sample or profile that cannot be used (the message names why)."""


@dataclass(frozen=True)
class Profile:
    names: tuple[str, ...]
    edges: tuple[np.ndarray, ...]
    counts: tuple[np.ndarray, ...]
    rows: int
    bins: int

    @property
    def profile_id(self) -> str:
        digest = hashlib.sha256()
        for name, edges in zip(self.names, self.edges, strict=True):
            digest.update(name.encode() + b"\0" + edges.astype("<f8").tobytes())
        return digest.hexdigest()[:16]

    def to_proto(self, model: str, version: str, source: str = "") -> mpb.ReferenceProfile:
        return mpb.ReferenceProfile(
            model=model,
            version=version,
            features=[
                mpb.FeatureBins(name=n, edges=e.tolist(), counts=c.tolist())
                for n, e, c in zip(self.names, self.edges, self.counts, strict=True)
            ],
            rows=self.rows,
            profile_id=self.profile_id,
            created_at_ms=int(time.time() * 1000),
            source=source,
            bins=self.bins,
        )

    @classmethod
    def from_proto(cls, message: mpb.ReferenceProfile) -> Profile:
        names, edges, counts = [], [], []
        for feature in message.features:
            e = np.array(feature.edges, dtype=np.float64)
            c = np.array(feature.counts, dtype=np.int64)
            if e.size == 0 or c.size != e.size + 1 or np.any(np.diff(e) <= 0) or not np.all(np.isfinite(e)):
                raise ProfileError(
                    f"feature {feature.name!r}: edges must be finite and increasing with one more count than edges"
                )
            names.append(feature.name)
            edges.append(e)
            counts.append(c)
        if not names:
            raise ProfileError("the profile has no features")
        return cls(tuple(names), tuple(edges), tuple(counts), int(message.rows), int(message.bins))


def build_profile(plan: FeaturePlan, sample: dict[str, np.ndarray], rows: int, bins: int) -> Profile:
    """Bins and reference counts for every feature of ``plan`` from a reference sample."""
    if not len(plan):
        raise ProfileError("the model has no input that drift can be measured on (numeric or BYTES)")
    if rows < bins:
        raise ProfileError(f"the reference has {rows} rows; at least {bins} (one per bin) are needed")
    values = plan.extract(sample, rows)
    if not np.all(np.isfinite(values)):
        bad = [plan.names[j] for j in np.flatnonzero(~np.all(np.isfinite(values), axis=0))][:5]
        raise ProfileError(f"the reference holds NaN or Inf values (features {', '.join(bad)})")
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges, counts = [], []
    for j in range(values.shape[1]):
        column = values[:, j]
        low, high = column.min(), column.max()
        inner = np.quantile(column, quantiles)
        e = np.unique(np.concatenate(([low], inner, [np.nextafter(high, np.inf)])))
        edges.append(e)
        counts.append(np.bincount(np.searchsorted(e, column, side="right"), minlength=e.size + 1))
    return Profile(plan.names, tuple(edges), tuple(counts), rows, bins)


#: Below this many rows a batch is binned by one broadcast comparison instead of a
#: searchsorted per feature (cheaper for few rows; the same bins).
BROADCAST_ROWS = 16


class BinCounter:
    """Counts batches of feature rows into a profile's bins: (features, width) counts."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.features = len(profile.names)
        self.width = max(e.size for e in profile.edges) + 1
        # Padding edges are NaN: nothing compares >= NaN, so no value lands in a padding bin.
        matrix = np.full((self.features, self.width - 1), np.nan)
        reference = np.zeros((self.features, self.width), dtype=np.int64)
        for j, (e, c) in enumerate(zip(profile.edges, profile.counts, strict=True)):
            matrix[j, : e.size] = e
            reference[j, : c.size] = c
        self._edges = matrix
        #: The reference counts in the same padded layout (padding bins are always empty).
        self.reference = reference
        self._offsets = np.arange(self.features, dtype=np.intp)[None, :] * self.width

    def count(self, values: np.ndarray) -> np.ndarray:
        """Counts of one batch, shape (features, width); ``values`` is (rows, features)."""
        values = np.where(np.isnan(values), np.inf, values)
        if values.shape[0] < BROADCAST_ROWS:
            index = (values[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
        else:
            columns = np.ascontiguousarray(values.T)
            index = np.empty(columns.shape, dtype=np.intp)
            for j, edges in enumerate(self.profile.edges):
                index[j] = np.searchsorted(edges, columns[j], side="right")
            index = index.T
        flat = np.bincount((index + self._offsets).ravel(), minlength=self.features * self.width)
        return flat.reshape(self.features, self.width)
