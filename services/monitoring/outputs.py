"""Model-output metrics of one version, from each batch's outputs (issue 13 §3).

Per monitored output (``monitoring.outputs`` in config.yaml):

- classification: predicted-class counts (argmax; at most MAX_CLASS_LABELS labels, the
  rest counted as ``other``, so a 30k-class model cannot blow up the label set) and a
  confidence histogram: the top probability when the rows already are probabilities
  (in 0..1, summing to 1), else the top softmax. A single-column output is a binary
  score: class 1 when p >= 0.5 (a sigmoid first when it is a logit);
- regression: quantiles of the recent values (the last RECENT values);
- embedding: quantiles of the recent rows' L2 norms;
- every kind: NaN and Inf element counts. Rows holding either are left out of the rest.

Counts are kept in numpy arrays under a lock and turned into metric families at scrape
time (``collector.OutputCollector``): the monitor thread pays a few array additions per
batch instead of one ``observe()`` call per row.
"""

from __future__ import annotations

import threading

import numpy as np

MAX_CLASS_LABELS = 100
#: Upper bounds of the confidence histogram's buckets (+Inf is added at scrape).
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
#: Values (regression) or norms (embedding) the quantile gauges are computed over.
RECENT = 4096
QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
_PROBABILITY_TOLERANCE = 1e-3


class OutputStats:
    """What one monitored output has produced so far (thread-safe)."""

    def __init__(self, name: str, kind: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.kind = kind
        width = int(np.prod(shape)) if shape and -1 not in shape else 0
        self._binary = kind == "classification" and width == 1
        self.labels: tuple[str, ...] = ()
        if kind == "classification":
            classes = 2 if self._binary else min(max(width, 1), MAX_CLASS_LABELS)
            self.labels = tuple(str(i) for i in range(classes)) + (
                ("other",) if width > MAX_CLASS_LABELS else ()
            )
        self._lock = threading.Lock()
        self.class_counts = np.zeros(len(self.labels), dtype=np.int64)
        self.confidence_counts = np.zeros(len(CONFIDENCE_BUCKETS) + 1, dtype=np.int64)
        self.confidence_sum = 0.0
        self.nan = 0
        self.inf = 0
        self._recent = np.zeros(RECENT)
        self._recent_next = 0
        self._recent_filled = 0

    def observe(self, array: np.ndarray) -> None:
        """Account one batch of this output (rows first)."""
        values = np.asarray(array)
        if values.dtype.kind not in "fiub":
            return
        rows = values.reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
        rows = rows.astype(np.float64, copy=False)
        finite = np.isfinite(rows)
        nan = int(np.isnan(rows).sum())
        inf = int(rows.size - finite.sum()) - nan
        good = rows[finite.all(axis=1)]
        if self.kind == "classification":
            update = self._classify(good)
        elif self.kind == "embedding":
            update = np.linalg.norm(good, axis=1)
        else:
            update = good.ravel()
        with self._lock:
            self.nan += nan
            self.inf += inf
            if self.kind == "classification":
                classes, confidence = update
                self.class_counts += classes
                self.confidence_counts += confidence[0]
                self.confidence_sum += confidence[1]
            else:
                self._remember(update)

    def _classify(self, rows: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, float]]:
        if rows.shape[1] == 0 or rows.shape[0] == 0:
            return np.zeros_like(self.class_counts), (np.zeros_like(self.confidence_counts), 0.0)
        if self._binary:
            p = rows[:, 0]
            if p.min() < 0 or p.max() > 1:
                p = 1.0 / (1.0 + np.exp(-p))
            predicted = (p >= 0.5).astype(np.intp)
            top = np.maximum(p, 1 - p)
        else:
            predicted = rows.argmax(axis=1)
            sums = rows.sum(axis=1)
            is_probability = (
                rows.min() >= 0 and rows.max() <= 1 and np.all(np.abs(sums - 1) <= _PROBABILITY_TOLERANCE)
            )
            if is_probability:
                top = rows.max(axis=1)
            else:
                shifted = rows - rows.max(axis=1, keepdims=True)
                top = 1.0 / np.exp(shifted).sum(axis=1)
            predicted = np.minimum(predicted, len(self.labels) - 1)  # beyond the cap: "other"
        classes = np.bincount(predicted, minlength=len(self.labels))[: len(self.labels)]
        buckets = np.searchsorted(CONFIDENCE_BUCKETS, top, side="left")
        confidence = np.bincount(buckets, minlength=len(CONFIDENCE_BUCKETS) + 1)
        return classes, (confidence, float(top.sum()))

    def _remember(self, values: np.ndarray) -> None:
        values = values[-RECENT:]
        n = values.size
        end = self._recent_next + n
        if end <= RECENT:
            self._recent[self._recent_next:end] = values
        else:
            split = RECENT - self._recent_next
            self._recent[self._recent_next:] = values[:split]
            self._recent[: n - split] = values[split:]
        self._recent_next = end % RECENT
        self._recent_filled = min(RECENT, self._recent_filled + n)

    def snapshot(self) -> dict:
        """A consistent copy for the scrape: counts, histogram, sums, recent quantiles."""
        with self._lock:
            recent = self._recent[: self._recent_filled].copy()
            snap = {
                "classes": self.class_counts.copy(),
                "confidence": self.confidence_counts.copy(),
                "confidence_sum": self.confidence_sum,
                "nan": self.nan,
                "inf": self.inf,
            }
        snap["quantiles"] = np.quantile(recent, QUANTILES) if recent.size else None
        return snap
