"""Open-loop arrivals and how load is divided among client processes.

Pure functions and iterators with no clock and no asyncio, so they can be tested with a
seeded generator. The load loop turns these offsets into absolute send times.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PoissonArrivals:
    """Arrival offsets (seconds from 0) of a Poisson process at ``rate`` per second.

    Inter-arrival gaps are exponential with mean ``1 / rate``. Gaps are drawn in chunks so
    that a high-rate schedule costs one NumPy call per ``chunk`` arrivals, not one per
    arrival.
    """

    def __init__(self, rate: float, rng: np.random.Generator, *, chunk: int = 4096) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        self._rng = rng
        self._chunk = chunk

    def __iter__(self) -> Iterator[float]:
        now = 0.0
        scale = 1.0 / self.rate
        while True:
            offsets = now + np.cumsum(self._rng.exponential(scale, self._chunk))
            yield from offsets.tolist()
            now = float(offsets[-1])

    def until(self, horizon_s: float) -> list[float]:
        """Every arrival offset before ``horizon_s``."""
        out: list[float] = []
        for offset in self:
            if offset >= horizon_s:
                return out
            out.append(offset)
        raise AssertionError("unreachable: the arrival stream is endless")


def split_evenly(total: int, parts: int) -> list[int]:
    """Divide ``total`` callers among ``parts`` processes; sizes differ by at most one."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def split_rate(rate: float, parts: int) -> list[float]:
    """Divide a total arrival rate among processes.

    The sum of independent Poisson processes at rates r_i is a Poisson process at
    sum(r_i), so equal shares keep the combined arrivals Poisson at ``rate``.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    return [rate / parts] * parts
