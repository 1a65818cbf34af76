"""Read one version's statistics over a window, summed across every router (Redis).

The routers' layout is ``services.common.version_windows``; a window is read at one-second
resolution when it is short enough for those slots to still exist, else per minute.
"""

from __future__ import annotations

from typing import Any

from services.common import version_windows as vw

#: Most slots one read asks for (a longer window is read per minute).
MAX_SECOND_SLOTS = vw.SECOND_TTL_S - 60


async def read_window(
    redis: Any, prefix: str, model: str, versions: list[str], start_ms: int, end_ms: int
) -> dict[str, vw.WindowStats]:
    """Each of ``versions``' counts over [start_ms, end_ms], in one pipelined read."""
    start_s, end_s = start_ms // 1000, end_ms // 1000
    resolution, width, _ttl = vw.SECOND if end_s - start_s <= MAX_SECOND_SLOTS else vw.MINUTE
    slots = range(start_s // width, end_s // width + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for version in versions:
            for slot in slots:
                pipe.hgetall(vw.slot_key(prefix, resolution, model, version, slot))
        replies = await pipe.execute()
    out = {}
    per = len(slots)
    for i, version in enumerate(versions):
        stats = vw.WindowStats()
        for reply in replies[i * per:(i + 1) * per]:
            if reply:
                stats.add_hash(reply)
        out[version] = stats
    return out


async def read_shadow_window(
    redis: Any, prefix: str, model: str, versions: list[str], start_ms: int, end_ms: int
) -> tuple[dict[str, vw.ShadowStats], dict[str, list[bytes]]]:
    """Each shadow version's comparisons over [start_ms, end_ms], and its kept samples."""
    start_s, end_s = start_ms // 1000, end_ms // 1000
    resolution, width, _ttl = vw.SECOND if end_s - start_s <= MAX_SECOND_SLOTS else vw.MINUTE
    slots = range(start_s // width, end_s // width + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for version in versions:
            for slot in slots:
                pipe.hgetall(vw.shadow_key(prefix, resolution, model, version, slot))
            pipe.lrange(vw.shadow_samples_key(prefix, model, version), 0, vw.MAX_SHADOW_SAMPLES - 1)
        replies = await pipe.execute()
    stats, samples = {}, {}
    per = len(slots) + 1
    for i, version in enumerate(versions):
        found = vw.ShadowStats()
        chunk = replies[i * per:(i + 1) * per]
        for reply in chunk[:-1]:
            if reply:
                found.add_hash(reply)
        stats[version] = found
        samples[version] = [s for s in chunk[-1] if s]
    return stats, samples
