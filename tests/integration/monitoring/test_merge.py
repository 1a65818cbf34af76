"""Counts merge across workers through Redis: two workers' halves score exactly as one worker's whole."""

from __future__ import annotations

import numpy as np
import pytest
from redis import asyncio as aioredis

from services.common.monitoring_config import DriftConfig
from services.common.signature import TensorSpec
from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
from services.monitoring import windows
from services.monitoring.features import plan_features
from services.monitoring.profile import BinCounter, build_profile
from tests.support.digits_eval import split
from tests.support.processes import start_redis

WINDOW_S = 10.0
WINDOW = 170_000_000  # any window id; "now" below is after its end


@pytest.fixture(scope="module")
def redis_url():
    server = start_redis()
    yield server.url
    server.kill()


def _report(counter: BinCounter, plan, rows: np.ndarray, profile_id: str) -> mpb.DriftCounts:
    counts = counter.count(plan.extract({"input__0": rows}, len(rows)))
    return mpb.DriftCounts(
        model="digits", version="2", profile_id=profile_id, window=WINDOW, window_s=WINDOW_S, rows=len(rows),
        bins_per_feature=counter.width, counts=counts.ravel().tolist(),
    )


async def test_two_workers_merge_to_the_score_of_one(redis_url):
    x_train, x_test, _, _ = split()
    x_test = x_test.copy()
    x_test[:, 5] += 4  # some drift, so the scores are not all near zero
    plan = plan_features([TensorSpec("input__0", "FP32", (64,))], 128)
    profile = build_profile(plan, {"input__0": x_train}, len(x_train), 10)
    redis = aioredis.Redis.from_url(redis_url)
    now = (WINDOW + 1) * WINDOW_S + windows.report_grace_s(WINDOW_S)
    try:
        results = []
        for prefix, parts in (("one:", [x_test]), ("two:", [x_test[::2], x_test[1::2]])):
            keys = windows.Keys(prefix)
            await windows.store_profile(redis, keys, profile.to_proto("digits", "2"))
            for part in parts:  # each part as its own worker would count it
                counter = BinCounter(profile)
                await windows.add_counts(redis, keys, _report(counter, plan, part, profile.profile_id))
            results.append(await windows.drift_score(redis, "digits", "2", key_prefix=prefix, now=now))
        one, two = results
        assert one.scored and two.scored and one.rows == two.rows == len(x_test)
        assert [(f.feature, f.psi, f.js, f.ks, f.level) for f in one.features] == [
            (f.feature, f.psi, f.js, f.ks, f.level) for f in two.features
        ]
        assert one.features[0].feature == "input__0[5]" and one.features[0].level == "drift"
        # Until its reports can all have arrived the window is not scored; nor with fewer rows than min_rows.
        early = await windows.drift_score(redis, "digits", "2", key_prefix="one:", now=now - 1)
        assert not early.scored and early.note == "no complete window yet"
        strict = await windows.drift_score(
            redis, "digits", "2", key_prefix="one:", now=now, config=DriftConfig(min_rows=10_000)
        )
        assert not strict.scored and "fewer than min_rows 10000" in strict.note
    finally:
        await redis.aclose()
