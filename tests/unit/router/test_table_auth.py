"""Routing snapshots, key checks and metadata answered from the table."""

from __future__ import annotations

import pytest

from services.common.errors import NotFound, PermissionDenied, Unauthenticated
from services.gen.inference import grpc_service_pb2 as pb
from services.router import describe
from services.router.auth import authenticate, authorize
from services.router.table import build_snapshot

from .tables import DATA_KEY, DIGITS_ONLY_KEY, LIMITED_KEY, REVOKED_KEY, table, worker

WORKERS = [worker("w1:1", [("digits", "1"), ("digits", "2")]), worker("w2:1", [("digits", "1")])]


def test_snapshot_indexes_ready_workers_and_policy():
    snap = build_snapshot(table(WORKERS))
    digits = snap.models["digits"]
    assert digits.ordered == ("1", "2", "3")
    assert digits.versions["1"].workers == ("w1:1", "w2:1")
    assert digits.versions["2"].workers == ("w1:1",)
    assert digits.versions["3"].workers == ()
    assert digits.sticky_header == "x-user-id"
    assert digits.default_version == "1"
    assert digits.versions["1"].signature.input_by_name["input__0"].shape == (4,)
    assert snap.worker_addresses == {"w1:1", "w2:1"}
    assert snap.models["text"].versions["1"].workers == ()


def test_auth_matrix():
    snap = build_snapshot(table(WORKERS))
    assert authenticate(snap, f"Bearer {DATA_KEY}").key_id == "000000000001"
    assert authenticate(snap, f"bearer {LIMITED_KEY}").per_second == 1
    for header in (None, "", "Bearer ", f"Basic {DATA_KEY}", "Bearer shk_nope", f"Bearer {REVOKED_KEY}"):
        with pytest.raises(Unauthenticated):
            authenticate(snap, header)
    only = authenticate(snap, f"Bearer {DIGITS_ONLY_KEY}")
    authorize(only, "digits")
    with pytest.raises(PermissionDenied):
        authorize(only, "text")
    authorize(authenticate(snap, f"Bearer {DATA_KEY}"), "text")


def test_metadata_and_config_from_signature():
    snap = build_snapshot(table(WORKERS))
    model, entry = describe.find(snap, "digits", "")
    meta = describe.model_metadata(model, entry)
    assert meta.name == "digits" and list(meta.versions) == ["1", "2", "3"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input__0", "FP32", [-1, 4])]
    config = describe.model_config(model, entry).config
    assert config.max_batch_size == 8 and config.input[0].data_type == pb.TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    _, text_entry = describe.find(snap, "text", "1")
    assert describe.model_config(snap.models["text"], text_entry).config.input[0].data_type == pb.TYPE_STRING
    with pytest.raises(NotFound):
        describe.find(snap, "nope", "")
    with pytest.raises(NotFound):
        describe.find(snap, "digits", "9")


def test_ready_and_index():
    snap = build_snapshot(table(WORKERS))
    digits = snap.models["digits"]
    usable = lambda entry: bool(entry.workers)  # noqa: E731
    assert describe.model_ready(digits, "", usable)
    assert describe.model_ready(digits, "2", usable)
    assert not describe.model_ready(digits, "3", usable)
    assert not describe.model_ready(snap.models["text"], "", usable)
    index = describe.repository_index(snap, lambda name: True, ready_only=False)
    assert [(m.name, m.version, m.state) for m in index.models] == [
        ("digits", "1", "READY"), ("digits", "2", "READY"), ("digits", "3", "UNAVAILABLE"),
        ("text", "1", "UNAVAILABLE"),
    ]
    ready = describe.repository_index(snap, lambda name: name == "digits", ready_only=True)
    assert [(m.name, m.version) for m in ready.models] == [("digits", "1"), ("digits", "2")]


def test_merge_statistics_sums_workers():
    def one(count: int) -> pb.ModelStatisticsResponse:
        stats = pb.ModelStatistics(name="digits", version="1", inference_count=count, execution_count=1,
                                   last_inference=count)
        stats.inference_stats.success.count = count
        stats.inference_stats.success.ns = 10 * count
        stats.batch_stats.add(batch_size=count).compute_infer.count = 1
        return pb.ModelStatisticsResponse(model_stats=[stats])

    merged = describe.merge_statistics([one(2), one(3), one(3)])
    (stats,) = merged.model_stats
    assert stats.inference_count == 8 and stats.execution_count == 3 and stats.last_inference == 3
    assert stats.inference_stats.success.ns == 80
    assert {(b.batch_size, b.compute_infer.count) for b in stats.batch_stats} == {(2, 1), (3, 2)}


def test_a_key_revoked_after_use_is_refused_at_once():
    # The router remembers token hashes (a stream sends the same key with every message);
    # the key itself is looked up in the current table on every request.
    table_with_key = table(WORKERS)
    assert authenticate(build_snapshot(table_with_key), f"Bearer {DATA_KEY}").key_id == "000000000001"
    for key in table_with_key.keys:
        if key.key_id == "000000000001":
            key.revoked = True
    with pytest.raises(Unauthenticated):
        authenticate(build_snapshot(table_with_key), f"Bearer {DATA_KEY}")
