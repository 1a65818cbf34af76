"""`--vary-header NAME --users N`: N stable values, calls made for the users in turn, merged exactly."""

from __future__ import annotations

import numpy as np

from services.bench.requests import RequestSource, RequestSpec
from services.bench.stats import ProcessResult, merge, users_summary


def header_values(source: RequestSource, calls: int) -> list[str]:
    return [dict(source.next_call()[1])["x-user-id"] for _ in range(calls)]


def test_each_user_keeps_one_value_in_every_process():
    spec = RequestSpec((b"req",), (("authorization", "Bearer k"),), vary_header="x-user-id", users=3)
    first, second = RequestSource(spec, 1, "1"), RequestSource(spec, 2, "2")
    values = header_values(first, 7)
    assert values == ["bench-user-0", "bench-user-1", "bench-user-2"] * 2 + ["bench-user-0"]
    assert header_values(second, 3) == values[:3]  # the same users, whichever process calls for them
    payload, metadata, user = first.next_call()
    assert payload == b"req" and ("authorization", "Bearer k") in metadata and user == 1


def test_without_users_every_call_is_a_new_user():
    source = RequestSource(RequestSpec((b"req",), vary_header="x-user-id"), 1, "1")
    values = header_values(source, 5)
    assert len(set(values)) == 5 and source.next_call()[2] is None


def test_users_summary_counts_users_one_version_answered():
    empty = np.empty(0)
    results = [ProcessResult(empty, {"OK": 3}, user_versions={(0, "2"): 2, (1, "3"): 1}),
               ProcessResult(empty, {"OK": 3}, user_versions={(0, "2"): 1, (1, "2"): 2})]
    summary = users_summary(merge(results).user_versions, 3, lambda u: f"u{u}")
    assert summary == {
        "count": 3,
        "on_one_version": 1,  # u0 only; u1 moved between versions, u2 made no OK call
        "calls_by_version": {"2": 5, "3": 1},
        "versions": {"u0": {"2": 3}, "u1": {"2": 2, "3": 1}, "u2": {}},
    }
