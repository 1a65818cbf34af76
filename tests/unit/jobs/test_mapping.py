"""Columns → inputs: whole-tensor columns, element columns, text, bad rows with reasons."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.signature import Signature, TensorSpec
from services.jobs.mapping import map_block, resolve
from services.jobs.readers import InputError, open_reader

SIG = Signature(inputs=(TensorSpec("X", "FP32", (3,)), TensorSpec("T", "BYTES", (1,))),
                outputs=(TensorSpec("Y", "FP32", (1,)),), max_batch_size=8)


def blocks(path, size=100):
    reader = open_reader(path, None)
    sources = resolve(reader, SIG)
    return [map_block(b, sources) for b in reader.blocks(size)]


def test_element_columns_and_a_text_column_from_parquet(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"X.0": [1.0, 2.0], "X.1": [3.0, 4.0], "X.2": [5.0, 6.0], "T": ["a", "bé"],
                             "unused": [0, 0]}), path)
    (mapped,) = blocks(path)
    (segment,) = mapped.segments
    np.testing.assert_array_equal(segment.inputs["X"], [[1, 3, 5], [2, 4, 6]])
    assert segment.inputs["T"].tolist() == [[b"a"], ["bé".encode()]]


def test_bad_jsonl_rows_are_named_and_the_rest_kept(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [{"X": [1, 2, 3], "T": "ok"}, "oops", {"X": [1, 2], "T": "x"}, {"X": [1, 2, 3], "T": 5},
            {"X": [4, 5, 6], "T": "fine"}]
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    (mapped,) = blocks(path)
    assert sorted(mapped.bad) == [1, 2, 3]
    assert "not a JSON object" in mapped.bad[1] and "shape [2]" in mapped.bad[2] and "BYTES" in mapped.bad[3]
    assert [int(r) for s in mapped.segments for r in s.rows] == [0, 4]


def test_an_input_with_no_column_is_an_error_naming_both_sides(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"a": [1.0], "T": ["x"]}), path)
    with pytest.raises(InputError, match=r"input 'X' \(FP32\[3\]\) needs a column 'X' or 'X.0' … 'X.2'.*columns: a, T"):
        blocks(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_reader(tmp_path / "nope.parquet", None)
    (tmp_path / "in.txt").write_text("x")
    with pytest.raises(InputError, match=r"cannot tell the input format.*--input-format"):
        open_reader(tmp_path / "in.txt", None)
    (tmp_path / "in.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a readable parquet file"):
        open_reader(tmp_path / "in.parquet", None)
