"""Reference profiles: bins from quantiles, counting into them, features of a signature."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.signature import TensorSpec
from services.monitoring.features import plan_features
from services.monitoring.profile import BinCounter, Profile, ProfileError, build_profile


def _plan(*specs: TensorSpec, cap: int = 128):
    return plan_features(list(specs), cap)


def test_bins_cover_the_reference_and_keep_outside_bins_empty():
    plan = _plan(TensorSpec("x", "FP32", (1,)))
    sample = {"x": np.arange(100, dtype=np.float32).reshape(100, 1)}
    profile = build_profile(plan, sample, 100, bins=10)
    (edges,), (counts,) = profile.edges, profile.counts
    assert edges[0] == 0 and edges[-1] > 99
    assert counts[0] == 0 and counts[-1] == 0  # below the minimum, above the maximum
    assert counts.sum() == 100
    assert counts[1:-1].tolist() == [10] * 10


def test_a_constant_feature_still_detects_a_move():
    plan = _plan(TensorSpec("x", "FP32", (1,)))
    profile = build_profile(plan, {"x": np.zeros((50, 1), np.float32)}, 50, bins=10)
    counter = BinCounter(profile)
    same = counter.count(np.zeros((20, 1)))
    moved = counter.count(np.ones((20, 1)))
    assert same.argmax() != moved.argmax()


def test_counting_matches_searchsorted_and_profile_round_trips():
    rng = np.random.default_rng(0)
    plan = _plan(TensorSpec("x", "FP32", (3,)))
    sample = {"x": rng.normal(size=(500, 3)).astype(np.float32)}
    profile = Profile.from_proto(build_profile(plan, sample, 500, bins=8).to_proto("m", "1"))
    counter = BinCounter(profile)
    batch = rng.normal(size=(64, 3))
    counts = counter.count(batch)
    for j, edges in enumerate(profile.edges):
        expected = np.bincount(np.searchsorted(edges, batch[:, j], side="right"), minlength=edges.size + 1)
        assert counts[j, : edges.size + 1].tolist() == expected.tolist()
    assert counts.sum() == 64 * 3
    assert (counter.reference.sum(axis=1) == 500).all()


def test_profile_id_depends_on_the_bins():
    plan = _plan(TensorSpec("x", "FP32", (1,)))
    a = build_profile(plan, {"x": np.arange(20, dtype=np.float32)[:, None]}, 20, 4)
    b = build_profile(plan, {"x": np.arange(20, dtype=np.float32)[:, None] * 2}, 20, 4)
    assert a.profile_id != b.profile_id


def test_reference_with_nan_or_too_few_rows_is_refused():
    plan = _plan(TensorSpec("x", "FP32", (1,)))
    with pytest.raises(ProfileError, match="NaN"):
        build_profile(plan, {"x": np.array([[1.0], [np.nan]] * 10, np.float32)}, 20, 4)
    with pytest.raises(ProfileError, match="3 rows"):
        build_profile(plan, {"x": np.ones((3, 1), np.float32)}, 3, 10)


def test_features_of_digits_text_and_variable_inputs():
    assert _plan(TensorSpec("input__0", "FP32", (64,))).names[:2] == ("input__0[0]", "input__0[1]")
    assert len(_plan(TensorSpec("input__0", "FP32", (64,)))) == 64
    assert _plan(TensorSpec("TEXT", "BYTES", (1,))).names == ("TEXT:bytes", "TEXT:words")
    assert _plan(TensorSpec("ids", "INT64", (-1,))).names == ("ids:mean", "ids:length")
    assert len(_plan(TensorSpec("bf", "BF16", (4,)))) == 0


def test_wide_inputs_are_sampled_evenly_up_to_the_cap():
    plan = _plan(TensorSpec("image", "FP32", (28, 28)), cap=16)
    assert len(plan) == 16
    assert plan.names[0] == "image[0]" and plan.names[-1] == "image[783]"
    values = plan.extract({"image": np.arange(2 * 784, dtype=np.float32).reshape(2, 28, 28)}, 2)
    assert values.shape == (2, 16)
    assert values[0, -1] == 783


def test_text_features_are_lengths_and_word_counts():
    plan = _plan(TensorSpec("TEXT", "BYTES", (1,)))
    texts = np.array([[b"hello world"], ["d\u00e9j\u00e0 vu".encode()]], dtype=object)
    assert plan.extract({"TEXT": texts}, 2).tolist() == [[11.0, 2.0], [9.0, 2.0]]


def test_few_and_many_rows_bin_alike_and_nan_lands_above_the_maximum():
    rng = np.random.default_rng(1)
    plan = _plan(TensorSpec("x", "FP32", (4,)))
    sample = {"x": np.round(rng.normal(size=(300, 4)) * 3).astype(np.float32)}  # discrete: uneven edge counts
    counter = BinCounter(build_profile(plan, sample, 300, 10))
    batch = rng.normal(size=(200, 4)) * 4
    batch[3, 1] = np.nan
    batch[7, 2] = np.inf
    many = counter.count(batch)
    few = sum(counter.count(batch[i:i + 2]) for i in range(0, 200, 2))
    assert (many == few).all()
    top = [e.size for e in counter.profile.edges]
    assert many[1, top[1]] >= 1 and many[2, top[2]] >= 1
    assert many.sum() == 200 * 4
