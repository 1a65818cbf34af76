"""Quality, agreement and verdicts; and the rule that picks the winner.

The task decides the figures (``--task``, else inferred): a *classifier* (labels are
integers, or the outputs are rows of probabilities) is judged by top-1 accuracy against
the labels, or top-1 agreement with the original without labels; an *embedding* model
(unit-norm output rows) by mean cosine similarity to the original's embeddings; a
*regression* by R² against the labels, or against the original's outputs without them.
Max absolute and relative differences from the original are reported for every task.

The drop is the original's quality minus the candidate's, so the original's own drop is 0;
a candidate is accepted when its drop is at most ``--max-accuracy-drop``.

WINNER_RULE: among accepted candidates that are at least 5 % faster (best-batch rows/s)
than the original or at least 5 % smaller on disk, the one with the highest best-batch
rows/s; ties go to the smaller artifact. The 5 % keeps a re-saved copy of the original
(a few bytes smaller, or faster by timing noise) from being registered as a "win".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.optimize.errors import OptimizeError

TASKS = ("classify", "embed", "regress")
#: How much faster or smaller than the original a candidate must be to be worth registering.
MIN_GAIN = 1.05
WINNER_RULE = (
    "fastest accepted candidate (highest rows/s at its best batch) among those at least 5% faster than the "
    "original or 5% smaller on disk; ties go to the smaller artifact"
)


def infer_task(original_outputs: np.ndarray, labels: np.ndarray | None) -> str:
    out = original_outputs.reshape(len(original_outputs), -1).astype(np.float64)
    if labels is not None and labels.dtype.kind in "iu" and out.shape[1] > 1:
        return "classify"
    if out.shape[1] > 1 and (out >= -1e-6).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        return "classify"
    if out.shape[1] > 1 and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3):
        return "embed"
    return "regress"


@dataclass(frozen=True)
class Quality:
    #: Accuracy (classify, with labels), agreement / cosine / R² otherwise: the figure the drop uses.
    quality: float
    quality_name: str
    accuracy: float | None
    agreement: float
    max_abs_diff: float
    max_rel_diff: float


def assess(task: str, original: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> Quality:
    if candidate.shape != original.shape:
        raise OptimizeError(f"candidate outputs have shape {candidate.shape}, the original's {original.shape}")
    o = original.reshape(len(original), -1).astype(np.float64)
    c = candidate.reshape(len(candidate), -1).astype(np.float64)
    diff = np.abs(o - c)
    max_abs = float(diff.max())
    max_rel = float((diff / np.maximum(np.abs(o), 1e-12)).max())
    accuracy = None
    if task == "classify":
        agreement = float(np.mean(o.argmax(axis=1) == c.argmax(axis=1)))
        if labels is not None:
            accuracy = float(np.mean(c.argmax(axis=1) == labels.reshape(-1)))
            return Quality(accuracy, "accuracy", accuracy, agreement, max_abs, max_rel)
        return Quality(agreement, "top-1 agreement", None, agreement, max_abs, max_rel)
    if task == "embed":
        cosine = np.sum(o * c, axis=1) / np.maximum(np.linalg.norm(o, axis=1) * np.linalg.norm(c, axis=1), 1e-12)
        mean_cos = float(cosine.mean())
        return Quality(mean_cos, "mean cosine", None, mean_cos, max_abs, max_rel)
    from sklearn.metrics import r2_score

    agreement = float(r2_score(o, c))
    if labels is not None:
        accuracy = float(r2_score(labels.reshape(len(labels), -1), c))
        return Quality(accuracy, "R²", accuracy, agreement, max_abs, max_rel)
    return Quality(agreement, "R² vs original", None, agreement, max_abs, max_rel)


def judge(drop: float, max_drop: float, quality_name: str) -> tuple[bool, str]:
    if drop <= max_drop + 1e-12:
        return True, f"{quality_name} drop {drop:+.4f} within {max_drop}"
    return False, f"{quality_name} drop {drop:+.4f} exceeds {max_drop}"


@dataclass(frozen=True)
class Scored:
    name: str
    accepted: bool
    rows_per_s: float
    size_bytes: int


def pick_winner(candidates: list[Scored], original_rows_per_s: float, original_size: int) -> str | None:
    """The candidate WINNER_RULE picks, or None."""
    worth = [c for c in candidates if c.accepted and (c.rows_per_s >= MIN_GAIN * original_rows_per_s
                                                      or c.size_bytes * MIN_GAIN <= original_size)]
    if not worth:
        return None
    return max(worth, key=lambda c: (c.rows_per_s, -c.size_bytes)).name
