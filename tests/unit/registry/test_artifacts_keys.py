"""Artifact hashing and fetching; API key format; the worker's artifact preparation."""

from __future__ import annotations

import hashlib

import pytest

from services.common import api_keys, artifacts
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.worker.cluster import ShaMismatch, prepare_version

CONFIG = """\
backend: onnx
inputs: [{name: x, datatype: FP32, shape: [1]}]
outputs: [{name: y, datatype: FP32, shape: [1]}]
"""


def test_file_sha256(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"abc")
    assert artifacts.sha256_of(path) == hashlib.sha256(b"abc").hexdigest()


def test_directory_sha256_is_the_sha256sum_manifest(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_bytes(b"b")
    (tmp_path / "sub" / "a.txt").write_bytes(b"a")
    lines = sorted([("b.txt", b"b"), ("sub/a.txt", b"a")])
    manifest = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in lines)
    expected = hashlib.sha256(manifest.encode()).hexdigest()
    assert artifacts.sha256_of(tmp_path) == expected
    # Bytecode a handler import leaves behind does not change the version's identity.
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "h.cpython-311.pyc").write_bytes(b"x")
    assert artifacts.sha256_of(tmp_path) == expected
    (tmp_path / "sub" / "a.txt").write_bytes(b"changed")
    assert artifacts.sha256_of(tmp_path) != expected


def test_fetch(tmp_path):
    path = tmp_path / "with space.onnx"
    path.write_bytes(b"x")
    assert artifacts.fetch(artifacts.uri_for(path)) == path
    assert artifacts.fetch(str(path)) == path
    with pytest.raises(artifacts.ArtifactError, match="does not exist"):
        artifacts.fetch((tmp_path / "missing").as_uri())
    with pytest.raises(artifacts.ArtifactError, match="unsupported scheme 's3'"):
        artifacts.fetch("s3://bucket/key")


def test_api_keys():
    key_id, key = api_keys.new_key()
    assert key.startswith(f"shk_{key_id}_") and api_keys.key_id_of(key) == key_id
    assert api_keys.key_hash(key) == hashlib.sha256(key.encode()).hexdigest()
    assert api_keys.key_id_of("not-a-key") is None
    assert api_keys.bearer_token([("x", "y"), ("authorization", "Bearer  abc ")]) == "abc"
    assert api_keys.bearer_token([("authorization", "Basic abc")]) is None
    assert api_keys.bearer_token([("authorization", "Bearer ")]) is None
    assert api_keys.bearer_token(None) is None


def version_for(path, sha: str) -> rpb.ModelVersion:
    return rpb.ModelVersion(model="m", version="1", artifact_uri=artifacts.uri_for(path), sha256=sha,
                            config_yaml=CONFIG)


def test_prepare_version_verifies_and_loads_exactly_the_verified_file(tmp_path):
    path = tmp_path / "exported.onnx"
    path.write_bytes(b"x")
    version_dir, config = prepare_version(version_for(path, artifacts.sha256_of(path)))
    assert version_dir == tmp_path and config.artifact_name == "exported.onnx"
    version_dir, config = prepare_version(version_for(tmp_path, artifacts.sha256_of(tmp_path)))
    assert version_dir == tmp_path and config.artifact_name == "model.onnx"
    with pytest.raises(ShaMismatch, match="sha256 mismatch"):
        prepare_version(version_for(path, "0" * 64))
