"""Drift statistics between a reference and a current binned distribution.

All functions take count arrays of shape (features, bins) (or (bins,)) and return one
score per feature. Bins are the reference profile's fixed bins, so the two arrays line
up; bins that are empty in both (the padding of features with fewer distinct edges)
contribute nothing.

Thresholds apply to the statistic itself (the usual PSI bands: < 0.1 stable, 0.1-0.25
moderate, > 0.25 significant), not to a p-value: with thousands of rows per window every
test's p-value is tiny for shifts nobody cares about.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon

#: Floor on a bin's share in PSI, so an empty bin on either side gives a large but finite
#: term (the common choice; without it one new value outside the reference range is inf).
PSI_EPSILON = 1e-4

LEVELS = ("ok", "warn", "drift")


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def psi(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Population stability index: sum over bins of (q - p) * ln(q / p)."""
    p = np.maximum(_shares(reference), PSI_EPSILON)
    q = np.maximum(_shares(current), PSI_EPSILON)
    return np.sum((q - p) * np.log(q / p), axis=-1)


def js(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance, base 2 (0: identical, 1: disjoint supports)."""
    p, q = _shares(reference), _shares(current)
    shape = p.shape[:-1]
    p, q = p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1])
    out = np.zeros(p.shape[0])
    both = (p.sum(axis=1) > 0) & (q.sum(axis=1) > 0)  # an empty side has no distribution
    if both.any():
        out[both] = jensenshannon(p[both], q[both], base=2, axis=1)
    return out.reshape(shape)


def ks(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Binned Kolmogorov-Smirnov statistic: the largest gap between the two binned CDFs.

    A lower bound on the exact two-sample KS statistic (gaps inside a bin are not seen),
    equal to it when the bins are the reference's deciles and shifts cross bin edges.
    """
    p, q = _shares(reference), _shares(current)
    return np.max(np.abs(np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1)), axis=-1)


METHODS = {"psi": psi, "js": js, "ks": ks}


def scores(reference: np.ndarray, current: np.ndarray) -> dict[str, np.ndarray]:
    """Every statistic, per feature."""
    return {name: fn(reference, current) for name, fn in METHODS.items()}


def level(score: float, bands: tuple[float, float]) -> str:
    """'ok' below the warn threshold, 'warn' below the drift threshold, else 'drift'."""
    warn, drift = bands
    if score >= drift:
        return "drift"
    if score >= warn:
        return "warn"
    return "ok"
