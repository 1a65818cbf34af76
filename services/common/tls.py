"""TLS for every Shunter hop, built in one place: server credentials, channels, service keys.

- ``ServerTls`` is what a service serves with (``--tls-cert``/``--tls-key``, and with
  ``--tls-client-ca`` mutual TLS). Its credentials are gRPC's *dynamic* server
  credentials: before each new handshake gRPC asks ``CertificateReloader`` for a
  configuration, and it re-reads the files when their inode, size or mtime changed. Replacing
  the files rotates the certificate without a restart; connections already open keep
  theirs, so nothing in flight is lost. A half-written or mismatched pair is refused with
  one warning and the previous pair stays in use until the files are whole again.
- ``ClientTls`` is what a service (or the CLI) dials other Shunter services with
  (``--tls-ca``, and for mutual TLS ``--tls-client-cert``/``--tls-client-key``). A
  service's channels notice when these files change and make their next calls with them.
- ``channel(address, ...)`` makes every service-to-service channel: TLS or plaintext, and
  with ``token`` an ``authorization: Bearer`` entry on every call, so a router presents
  its router key to workers on the unary calls and on the stream link alike.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

logger = logging.getLogger(__name__)

Options = Sequence[tuple[str, Any]]


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be read or does not parse."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise TlsFileError(f"{what} {path} is not PEM (no '-----BEGIN' line)")
    return data


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    """Inode, mtime and size of each file: a file renamed in (a Secret mount, cert-manager)
    changes the inode even within the filesystem's timestamp granularity."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((-1, -1, -1))
        else:
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def check_pair(cert_pem: bytes, key_pem: bytes, where: str) -> None:
    """TlsFileError unless ``key_pem`` is the private key of the first certificate in ``cert_pem``."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # also an encrypted key: TypeError
        raise TlsFileError(f"{where}: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if cert.public_key().public_bytes(encoding, public) != key.public_key().public_bytes(encoding, public):
        raise TlsFileError(f"{where}: the private key does not belong to the certificate")


@dataclass(frozen=True)
class ServerTls:
    """A service's own certificate, and with ``client_ca_file`` the CA its clients must be signed by."""

    cert_file: Path
    key_file: Path
    #: With a client CA, clients must present a certificate it signed (mTLS).
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic credentials that pick up new files at the next handshake (raises TlsFileError now)."""
        reloader = CertificateReloader(self)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial, reloader, require_client_authentication=self.client_ca_file is not None
        )


class CertificateReloader:
    """gRPC's certificate-configuration fetcher: a new configuration when the files changed, else None.

    gRPC calls it from its own threads before each handshake, hence the lock; a stat of
    two or three files is all a handshake costs when nothing changed.
    """

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._paths = [p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p is not None]
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths)
        self.initial = self._configuration()
        self.reloads = 0

    def _configuration(self) -> Any:
        tls = self._tls
        cert = _read(tls.cert_file, "TLS certificate")
        key = _read(tls.key_file, "TLS key")
        check_pair(cert, key, f"{tls.cert_file} and {tls.key_file}")
        ca = _read(tls.client_ca_file, "client CA") if tls.client_ca_file is not None else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> Any:
        stamp = _stamp(self._paths)
        if stamp == self._stamp:
            return None
        with self._lock:
            if stamp == self._stamp:
                return None
            # Recorded before reading, so a bad pair is reported once, not at every handshake.
            self._stamp = stamp
            try:
                configuration = self._configuration()
            except Exception as exc:  # gRPC calls this from its handshake: it must never raise
                logger.warning("TLS files changed but cannot be used (%s); keeping the previous certificate", exc)
                return None
            self.reloads += 1
            logger.info("TLS certificate reloaded from %s", self._tls.cert_file)
            return configuration


@dataclass(frozen=True)
class ClientTls:
    """How to dial a Shunter service over TLS: the CA to trust, and a client certificate for mTLS."""

    #: CA certificates that sign the servers' certificates; None: the system's roots.
    ca_file: Path | None = None
    #: Certificate and key presented to servers that require client certificates.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Name to check the server's certificate against instead of the dialled host.
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a TLS client certificate and its key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        ca = _read(self.ca_file, "TLS CA") if self.ca_file is not None else None
        if self.cert_file is not None and self.key_file is not None:
            cert = _read(self.cert_file, "TLS client certificate")
            key = _read(self.key_file, "TLS client key")
            check_pair(cert, key, f"{self.cert_file} and {self.key_file}")
            return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        return grpc.ssl_channel_credentials(root_certificates=ca)

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """Inode, mtime and size of each file, to notice a change."""
        return _stamp([p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None])


#: Least seconds between two checks of a channel's TLS files for changes.
RELOAD_CHECK_S = 1.0


def channel(
    address: str, *, options: Options = (), tls: ClientTls | None = None, token: str = ""
) -> Any:
    """An aio channel to a Shunter service: TLS when ``tls`` is given, and ``token`` on every call.

    Plaintext without a token is the grpc.aio.Channel itself. Otherwise a ``ServiceChannel``
    (the same calls): it adds the key to each call's metadata and, with TLS, re-reads the
    CA and client certificate when their files change (checked at most every
    ``RELOAD_CHECK_S`` when a call starts), so new calls use the new files.
    """
    if tls is None and not token:
        return grpc.aio.insecure_channel(address, options=list(options))
    return ServiceChannel(address, options, tls, token)


def auth_entry(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


class ServiceChannel:
    """An aio channel whose calls carry one ``authorization: Bearer`` entry and the current TLS files.

    Cheaper than a client interceptor: gRPC's aio interceptors add a task per call and a
    queue per streamed message; this adds one tuple to the metadata at call time. When the
    TLS files change, calls from then on go over a new inner channel made with them; calls
    and streams already open stay on the old one (closed with this channel), so a rotation
    interrupts nothing.
    """

    def __init__(self, address: str, options: Options, tls: ClientTls | None, token: str) -> None:
        self._address = address
        self._options = [*options, *(tls.options() if tls is not None else ())]
        self._tls = tls
        self._entry = auth_entry(token) if token else None
        self._stamp = tls.stamp() if tls is not None else ()
        self._next_check = time.monotonic() + RELOAD_CHECK_S
        self._retired: list[grpc.aio.Channel] = []
        #: Bumped when the inner channel is replaced; multicallables rebind on it.
        self.generation = 0
        self.inner = self._open()

    def _open(self) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(self._address, options=self._options)
        return grpc.aio.secure_channel(self._address, self._tls.credentials(), options=self._options)

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._tls is None or now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_S
        stamp = self._tls.stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            inner = self._open()
        except Exception as exc:  # a call is starting: keep it on the previous files rather than fail it
            logger.warning("TLS files for %s changed but cannot be used (%s); keeping the previous ones",
                           self._address, exc)
            return
        self._retired.append(self.inner)
        self.inner = inner
        self.generation += 1
        logger.info("TLS client files reloaded for %s", self._address)

    def _bind(self, kind: str, method: str, args: tuple, kwargs: dict) -> Any:
        bound: list[Any] = [-1, None]  # generation, multicallable
        entry = self._entry

        def call(*call_args: Any, metadata: Sequence[tuple[str, str]] | None = None, **call_kwargs: Any) -> Any:
            self._refresh()
            if bound[0] != self.generation:
                bound[0], bound[1] = self.generation, getattr(self.inner, kind)(method, *args, **kwargs)
            if entry is not None:
                metadata = (entry,) if not metadata else (entry, *metadata)
            return bound[1](*call_args, metadata=metadata, **call_kwargs)

        return call

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._bind("unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._bind("unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._bind("stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._bind("stream_stream", method, args, kwargs)

    async def close(self, grace: float | None = None) -> None:
        channels, self._retired = [*self._retired, self.inner], []
        for inner in channels:
            await inner.close(grace)

    async def __aenter__(self) -> ServiceChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:  # get_state, channel_ready, wait_for_state_change...
        return getattr(self.inner, name)
