"""Where artifacts may come from, what may be read as one, and how long hashing may take."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from services.common import artifacts
from services.common.errors import InvalidArgument
from services.registry.validation import check_artifact_uri


@pytest.mark.parametrize(
    "uri,why",
    [
        ("file:///models/../etc/passwd", "'..' segments"),
        ("file:///models/%2e%2e/etc/passwd", "'..' segments"),
        ("file:///models/%2E%2E/etc/passwd", "'..' segments"),
        ("file:///models/./x", "'..' segments"),
        ("file://otherhost/models/x", "names host 'otherhost'"),
        ("file:///models/x?y=1", "no query"),
        ("file:///models/x#frag", "no query"),
        ("file:///models/a%00b", "NUL"),
        ("s3://bucket/key", "unsupported scheme 's3'"),
        ("models/x", "unsupported scheme ''"),
    ],
)
def test_uris_that_name_something_else_are_refused(uri: str, why: str) -> None:
    with pytest.raises(artifacts.ArtifactError, match=why):
        artifacts.parse_uri(uri)
    with pytest.raises(InvalidArgument):
        check_artifact_uri(uri)


def test_local_file_uris_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "with space" / "model.onnx"
    assert artifacts.parse_uri(path.as_uri()) == path
    assert artifacts.parse_uri(f"file://localhost{path}") == path
    assert check_artifact_uri(path.as_uri(), (tmp_path,)) == path.as_uri()  # need not exist yet


def test_roots_confine_the_resolved_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "model.onnx").write_bytes(b"x")
    outside = tmp_path / "secret"
    outside.write_text("s")
    (root / "link").symlink_to(outside)
    roots = (root,)
    artifacts.check_uri((root / "m" / "1").as_uri(), roots)
    for path in (Path("/etc/passwd"), outside, root / "link", tmp_path):
        with pytest.raises(artifacts.ArtifactError, match="outside the artifact roots"):
            artifacts.check_uri(path.as_uri(), roots)
        with pytest.raises(InvalidArgument, match="outside the artifact roots"):
            check_artifact_uri(path.as_uri(), roots)


def test_devices_and_fifos_are_never_artifacts(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((Path("/dev/zero"), "character device"), (fifo, "FIFO")):
        with pytest.raises(artifacts.ArtifactError, match=f"not a regular file or directory \\(a {kind}\\)"):
            artifacts.check_uri(path.as_uri())
        with pytest.raises(artifacts.ArtifactError, match=kind):
            artifacts.sha256_of(path)
        # Even when a path that passed a check is swapped for one: the open descriptor is checked.
        with pytest.raises(artifacts.ArtifactError, match="not a regular file"):
            artifacts.file_sha256(path)


def test_a_directory_counts_only_its_regular_files(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    before = artifacts.sha256_of(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert artifacts.sha256_of(tmp_path) == before


def test_hashing_has_a_size_cap_a_timeout_and_can_be_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\0" * (3 << 20))
    assert artifacts.sha256_of(path)
    with pytest.raises(artifacts.ArtifactError, match="larger than the limit of 1024 bytes"):
        artifacts.sha256_of(path, max_bytes=1024)
    with pytest.raises(artifacts.ArtifactError, match="larger than the limit"):
        artifacts.sha256_of(tmp_path, max_bytes=1024)  # a directory's files together
    with pytest.raises(artifacts.ArtifactError, match="took longer than 0 s"):
        artifacts.sha256_of(path, timeout_s=0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(artifacts.ArtifactError, match="cancelled"):
        artifacts.sha256_of(path, cancel=cancel)


def test_files_inside_a_directory_must_stay_inside_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    (root / "m" / "model.onnx").write_bytes(b"x")
    (root / "m" / "inside").symlink_to(root / "m" / "model.onnx")
    assert artifacts.sha256_of(root / "m", roots=(root,))
    (tmp_path / "secret").write_text("s")
    (root / "m" / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(artifacts.ArtifactError, match="outside the artifact roots"):
        artifacts.sha256_of(root / "m", roots=(root,))
    assert artifacts.sha256_of(root / "m")  # no roots: not confined
