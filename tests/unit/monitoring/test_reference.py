"""Reading reference samples: texts for minilm-like models, shapes and kinds against a signature."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.signature import TensorSpec
from services.monitoring.features import plan_features
from services.monitoring.profile import build_profile
from services.monitoring.reference import ReferenceError, load_reference

TEXT = [TensorSpec("TEXT", "BYTES", (1,))]
DIGITS = [TensorSpec("input__0", "FP32", (64,))]


def test_texts_from_jsonl_make_a_length_profile(tmp_path):
    path = tmp_path / "texts.jsonl"
    sentences = [f"sentence number {i} " + "word " * (i % 7) for i in range(50)]
    path.write_text("".join(json.dumps({"TEXT": s}) + "\n" for s in sentences))
    arrays, rows = load_reference(path, TEXT)
    assert rows == 50 and arrays["TEXT"].shape == (50, 1)
    profile = build_profile(plan_features(TEXT, 128), arrays, rows, 10)
    assert profile.names == ("TEXT:bytes", "TEXT:words")
    assert all(c.sum() == 50 for c in profile.counts)


def test_numbers_for_a_text_input_are_refused(tmp_path):
    path = tmp_path / "numbers.npy"
    np.save(path, np.zeros((10, 1), np.float32))
    with pytest.raises(ReferenceError, match=r"'TEXT' is float32 .*signature says BYTES"):
        load_reference(path, TEXT)


def test_a_one_column_array_fits_a_shape_1_input_and_float64_fits_fp32(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.arange(20, dtype=np.float64))
    arrays, rows = load_reference(path, [TensorSpec("x", "FP32", (1,))])
    assert rows == 20 and arrays["x"].shape == (20, 1)
    np.save(path, np.zeros((5, 64)))
    assert load_reference(path, DIGITS)[1] == 5


def test_npy_for_a_two_input_model_is_refused(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros((5, 4), np.float32))
    with pytest.raises(ReferenceError, match="holds one array but the model has 2 inputs"):
        load_reference(path, [TensorSpec("a", "FP32", (4,)), TensorSpec("b", "FP32", (4,))])


def test_missing_file_and_jsonl_without_an_input(tmp_path):
    with pytest.raises(ReferenceError, match="does not exist"):
        load_reference(tmp_path / "nope.npz", DIGITS)
    path = tmp_path / "rows.jsonl"
    path.write_text('{"other": 1}\n')
    with pytest.raises(ReferenceError, match=r"rows.jsonl:1: no value for input 'input__0'"):
        load_reference(path, DIGITS)
