"""Model artifacts: their sha256, and fetching them by URI.

An artifact is one file or one directory. The sha256 of a file is the usual one; the
sha256 of a directory is the sha256 of its manifest, one ``<file sha256>  <relative
path>\\n`` line per regular file, sorted by path (the ``sha256sum`` format, so an
operator can recompute it with standard tools). ``__pycache__`` directories and
``*.pyc`` files are left out: importing a handler writes them, and that must not
change the version's identity.

``fetch(uri)`` returns a local path for a URI. Only ``file://`` (and plain absolute
paths) exist today; an object store is one more branch in ``fetch`` that downloads into
a cache directory and returns that path, and the caller still verifies the sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

_CHUNK = 1 << 20


class ArtifactError(Exception):
    """An artifact cannot be fetched or read; the message names it."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(directory: Path) -> list[tuple[str, str]]:
    """Sorted ``(relative posix path, file sha256)`` of every file under ``directory``."""
    entries = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".pyc"):
                continue
            path = Path(root) / name
            if not path.is_file():  # sockets, dangling links: not part of a model
                continue
            entries.append((path.relative_to(directory).as_posix(), file_sha256(path)))
    entries.sort()
    return entries


def sha256_of(path: Path) -> str:
    """The sha256 of an artifact: a file's own, or a directory's manifest's."""
    try:
        if path.is_dir():
            text = "".join(f"{digest}  {rel}\n" for rel, digest in manifest(path))
            return hashlib.sha256(text.encode()).hexdigest()
        return file_sha256(path)
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc.strerror or exc}") from None


def uri_for(path: Path) -> str:
    """The ``file://`` URI the registry records for a local artifact."""
    return path.resolve().as_uri()


def fetch(uri: str) -> Path:
    """A local path holding the artifact named by ``uri`` (a file or a directory).

    Raises ArtifactError when the scheme is unsupported or nothing is there.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ArtifactError(f"artifact {uri}: file:// URIs must name a local path")
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "" and uri.startswith("/"):
        path = Path(uri)
    else:
        raise ArtifactError(f"artifact {uri}: unsupported scheme {parsed.scheme!r} (file:// only)")
    if not path.exists():
        raise ArtifactError(f"artifact {uri}: {path} does not exist")
    return path
