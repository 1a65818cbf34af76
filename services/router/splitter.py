"""Traffic split: which version of a model serves a request (DESIGN §4).

``Split.choose`` is a pure function of the model's weights and, for sticky traffic, the
sticky key, so every router replica picks the same version for the same key with no
shared state.

Sticky keys use weighted rendezvous hashing (an "exponential race"): for each version
``v`` with weight ``w_v > 0`` the key is hashed with the version name to a uniform
``u_v`` in (0, 1], and the version with the smallest ``-ln(u_v) / w_v`` wins. Each
``-ln(u_v) / w_v`` is an independent exponential variable with rate ``w_v``, so a
version wins for exactly ``w_v / Σw`` of the keys.

Properties (unit-tested in tests/unit/router/test_splitter.py):

- *Sticky*: the same key and the same weights give the same version, on every replica
  and across restarts (the hash is BLAKE2b, never Python's salted ``hash``).
- *A raise keeps its keys*: when one version's weight rises and no other weight rises
  (a canary going 10 → 20), every key already on that version stays there: its score
  only falls while every other score holds or rises.
- *Keys move only because of the change*: a key moves from ``u`` to ``x`` only if ``u``'s
  weight fell or ``x``'s rose. With two versions (the usual canary or blue-green pair)
  that means a raise moves keys onto the raised version and nowhere else. With three or
  more versions a key of a version that lost weight may land on any version, because
  no stateless assignment can keep every unchanged version's exact key set through every
  such change (the sets of three versions at 50 % each would have to be disjoint).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_TWO_64 = float(1 << 64)


def _uniform(key: bytes, version: bytes) -> float:
    """A uniform value in (0, 1] from the key and version, stable across processes."""
    digest = hashlib.blake2b(version + b"\0" + key, digest_size=8, person=b"shunter-split").digest()
    return (int.from_bytes(digest, "little") + 1) / _TWO_64


@dataclass(frozen=True, slots=True)
class Split:
    """A model's weights, ready for per-request choices."""

    #: (version, weight) for every version with a positive weight, in ascending version order.
    weighted: tuple[tuple[str, int], ...]

    @classmethod
    def from_weights(cls, weights: Mapping[str, int]) -> Split:
        def order(item: tuple[str, int]) -> tuple[int, int | str]:
            version = item[0]
            return (0, int(version)) if version.isdigit() else (1, version)

        return cls(tuple(sorted(((v, int(w)) for v, w in weights.items() if w > 0), key=order)))

    @property
    def total(self) -> int:
        return sum(weight for _, weight in self.weighted)

    def choose(self, sticky_key: bytes | None = None, rand: Callable[[], float] = random.random) -> str | None:
        """The version for one request; None when no version carries weight."""
        weighted = self.weighted
        if not weighted:
            return None
        if len(weighted) == 1:
            return weighted[0][0]
        if sticky_key is None:
            point = rand() * self.total
            for version, weight in weighted:
                point -= weight
                if point < 0:
                    return version
            return weighted[-1][0]
        best_version = weighted[0][0]
        best_score = math.inf
        for version, weight in weighted:
            score = -math.log(_uniform(sticky_key, version.encode())) / weight
            if score < best_score:
                best_version, best_score = version, score
        return best_version
