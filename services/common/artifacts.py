"""Model artifacts: where they may come from, their sha256, and fetching them by URI.

An artifact is one regular file or one directory. The sha256 of a file is the usual one;
the sha256 of a directory is the sha256 of its manifest, one ``<file sha256>  <relative
path>\\n`` line per regular file, sorted by path (the ``sha256sum`` format, so an operator
can recompute it with standard tools). ``__pycache__`` directories and ``*.pyc`` files are
left out: importing a handler writes them, and that must not change the version's
identity. Devices, FIFOs and sockets are never read: the top-level artifact must be a
regular file or a directory, and inside a directory only regular files count.

Confinement: ``parse_uri`` accepts only ``file://`` URIs of this host whose path has no
``.``/``..`` segments (also when percent-encoded) and no query or fragment; ``confine``
then requires the resolved path (symlinks followed) to lie inside one of the configured
artifact roots. Hashing reads at most ``max_bytes`` and stops once ``timeout_s`` has
passed or ``cancel`` is set, so a huge or slow artifact cannot hold a caller forever.

``fetch(uri)`` returns a local path for a URI. Only ``file://`` (and plain absolute
paths) exist today; an object store is one more branch in ``fetch`` that downloads into
a cache directory and returns that path, and the caller still verifies the sha256.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

_CHUNK = 1 << 20
#: Largest artifact (all its files together) anyone hashes or loads by default.
MAX_ARTIFACT_BYTES = 64 << 30
#: How long hashing one artifact may take by default before it is given up.
HASH_TIMEOUT_S = 900.0


class ArtifactError(Exception):
    """An artifact cannot be fetched or read, or is not allowed; the message names it."""


class _Budget:
    """What hashing may still spend: bytes, time, and whether someone asked it to stop."""

    def __init__(
        self,
        what: str,
        max_bytes: int,
        timeout_s: float | None,
        cancel: threading.Event | None,
        roots: Sequence[Path] = (),
    ):
        self.what = what
        self.roots = tuple(roots)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.cancel = cancel
        self.used = 0

    def spend(self, nbytes: int) -> None:
        self.used += nbytes
        if self.used > self.max_bytes:
            raise ArtifactError(f"artifact {self.what} is larger than the limit of {self.max_bytes} bytes")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ArtifactError(f"hashing artifact {self.what} took longer than {self.timeout_s:g} s; gave up")
        if self.cancel is not None and self.cancel.is_set():
            raise ArtifactError(f"hashing artifact {self.what} was cancelled")


def _unlimited(path: Path) -> _Budget:
    return _Budget(str(path), MAX_ARTIFACT_BYTES, None, None)


def file_sha256(path: Path, budget: _Budget | None = None) -> str:
    """The sha256 of one regular file, read through a non-blocking open that refuses anything else.

    The file type is checked on the open descriptor, so a path swapped for a FIFO or a
    device after an earlier check is still refused (and opening a FIFO does not hang).
    """
    budget = budget or _unlimited(path)
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"artifact {budget.what}: {path} is not a regular file ({_kind(info.st_mode)})")
        if budget.used + info.st_size > budget.max_bytes:
            raise ArtifactError(f"artifact {budget.what} is larger than the limit of {budget.max_bytes} bytes")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            while chunk := fh.read(_CHUNK):
                budget.spend(len(chunk))
                digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def manifest(directory: Path, budget: _Budget | None = None) -> list[tuple[str, str]]:
    """Sorted ``(relative posix path, file sha256)`` of every regular file under ``directory``."""
    budget = budget or _unlimited(directory)
    entries = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".pyc"):
                continue
            path = Path(root) / name
            if not path.is_file():  # sockets, FIFOs, devices, dangling links: not part of a model
                continue
            budget.spend(0)
            if budget.roots:
                confine(path, budget.roots, budget.what)  # a symlink inside may lead out
            entries.append((path.relative_to(directory).as_posix(), file_sha256(path, budget)))
    entries.sort()
    return entries


def sha256_of(
    path: Path,
    *,
    max_bytes: int = MAX_ARTIFACT_BYTES,
    timeout_s: float | None = HASH_TIMEOUT_S,
    cancel: threading.Event | None = None,
    roots: Sequence[Path] = (),
) -> str:
    """The sha256 of an artifact: a file's own, or a directory's manifest's.

    Raises ArtifactError when it is neither a regular file nor a directory, is larger than
    ``max_bytes``, takes longer than ``timeout_s`` or ``cancel`` is set meanwhile, or (with
    ``roots``) a file inside it resolves outside them.
    """
    budget = _Budget(str(path), max_bytes, timeout_s, cancel, roots)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            text = "".join(f"{digest}  {rel}\n" for rel, digest in manifest(path, budget))
            return hashlib.sha256(text.encode()).hexdigest()
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"artifact {path} is not a regular file or directory ({_kind(info.st_mode)})")
        return file_sha256(path, budget)
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc.strerror or exc}") from None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def uri_for(path: Path) -> str:
    """The ``file://`` URI the registry records for a local artifact."""
    return path.resolve().as_uri()


def parse_uri(uri: str) -> Path:
    """The local path a ``file://`` URI (or a bare absolute path) names, checked lexically.

    Nothing is read. Refused: other schemes, another host, a relative path, ``.``/``..``
    segments (also as ``%2e%2e``), NUL bytes, and a query or fragment (which would silently
    not be part of the path).
    """
    if uri.startswith("/"):
        return _checked_path(uri, uri)
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ArtifactError(f"artifact {uri}: unsupported scheme {parsed.scheme!r} (file:// only)")
    if parsed.netloc not in ("", "localhost"):
        raise ArtifactError(f"artifact {uri}: names host {parsed.netloc!r}; file:// URIs must name a local path")
    if parsed.query or parsed.fragment or parsed.params:
        raise ArtifactError(f"artifact {uri}: a file:// URI has no query, fragment or parameters")
    return _checked_path(unquote(parsed.path), uri)


def _checked_path(text: str, uri: str) -> Path:
    if not text.startswith("/"):
        raise ArtifactError(f"artifact {uri}: the path must be absolute")
    if "\x00" in text:
        raise ArtifactError(f"artifact {uri}: the path holds a NUL byte")
    if any(part in (".", "..") for part in text.split("/")):
        raise ArtifactError(f"artifact {uri}: the path may not contain '.' or '..' segments")
    return Path(text)


def confine(path: Path, roots: Sequence[Path], uri: str = "") -> Path:
    """``path`` resolved (symlinks followed), which must lie inside one of ``roots``.

    With no roots nothing is confined. A path that does not exist here is judged by its
    text alone (it has no ``..``, see ``parse_uri``); whoever reads it later confines it
    again.
    """
    resolved = path.resolve() if path.exists() else path
    if not roots or any(resolved.is_relative_to(r) or resolved.is_relative_to(r.resolve()) for r in roots):
        return resolved
    listed = ", ".join(str(r) for r in roots)
    raise ArtifactError(f"artifact {uri or path}: {resolved} is outside the artifact roots ({listed})")


def check_kind(path: Path, uri: str = "") -> None:
    """Refuse anything but a regular file or a directory (when the path exists here)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ArtifactError(f"artifact {uri or path}: cannot stat {path}: {exc.strerror or exc}") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise ArtifactError(
            f"artifact {uri or path}: {path} is not a regular file or directory ({_kind(info.st_mode)})"
        )


def check_uri(uri: str, roots: Sequence[Path] = ()) -> Path:
    """The path ``uri`` names once it passes every rule above; it need not exist here."""
    path = parse_uri(uri)
    confine(path, roots, uri)
    check_kind(path, uri)
    return path


def fetch(uri: str, roots: Sequence[Path] = ()) -> Path:
    """A local path holding the artifact named by ``uri`` (a regular file or a directory).

    Raises ArtifactError when the URI is not allowed (``check_uri``) or nothing is there.
    """
    path = parse_uri(uri)
    if not path.exists():
        raise ArtifactError(f"artifact {uri}: {path} does not exist")
    return check_uri(uri, roots)
