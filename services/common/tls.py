"""TLS for every Shunter hop, built in one place: server credentials, channels, service keys.

- ``ServerTls`` is what a service serves with (``--tls-cert``/``--tls-key``, and with
  ``--tls-client-ca`` mutual TLS). Its credentials are gRPC's *dynamic* server
  credentials: before each new handshake gRPC asks ``CertificateReloader`` for a
  configuration, and it re-reads the files when their size or mtime changed. Replacing
  the files rotates the certificate without a restart; connections already open keep
  theirs, so nothing in flight is lost. A half-written or mismatched pair is refused with
  one warning and the previous pair stays in use until the files are whole again.
- ``ClientTls`` is what a service (or the CLI) dials other Shunter services with
  (``--tls-ca``, and for mutual TLS ``--tls-client-cert``/``--tls-client-key``). Its files
  are read when a channel is made.
- ``channel(address, ...)`` makes every service-to-service channel: TLS or plaintext, and
  with ``token`` an ``authorization: Bearer`` entry on every call, so a router presents
  its router key to workers on the unary calls and on the stream link alike.
"""

from __future__ import annotations

import logging
import os
import threading
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


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((-1, -1))
        else:
            stamps.append((st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def check_pair(cert_pem: bytes, key_pem: bytes, where: str) -> None:
    """TlsFileError unless ``key_pem`` is the private key of the first certificate in ``cert_pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
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
            except TlsFileError as exc:
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


def channel(
    address: str, *, options: Options = (), tls: ClientTls | None = None, token: str = ""
) -> Any:
    """An aio channel to a Shunter service: TLS when ``tls`` is given, and ``token`` on every call.

    Returns the grpc.aio.Channel itself, or with a token a ``KeyedChannel`` around it (the
    same calls; each multicallable adds the key to the call's metadata).
    """
    opts = [*options, *(tls.options() if tls is not None else ())]
    if tls is not None:
        inner = grpc.aio.secure_channel(address, tls.credentials(), options=opts)
    else:
        inner = grpc.aio.insecure_channel(address, options=opts)
    return KeyedChannel(inner, token) if token else inner


def auth_entry(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


class KeyedChannel:
    """An aio channel whose calls all carry one ``authorization: Bearer`` entry.

    Cheaper than a client interceptor: gRPC's aio interceptors add a task per call and a
    queue per streamed message; this adds one tuple to the metadata at call time.
    """

    def __init__(self, inner: grpc.aio.Channel, token: str) -> None:
        self.inner = inner
        self._entry = auth_entry(token)

    def _keyed(self, multicallable: Any) -> Any:
        entry = self._entry

        def call(*args: Any, metadata: Sequence[tuple[str, str]] | None = None, **kwargs: Any) -> Any:
            merged = (entry,) if not metadata else (entry, *metadata)
            return multicallable(*args, metadata=merged, **kwargs)

        return call

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._keyed(self.inner.unary_unary(method, *args, **kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._keyed(self.inner.unary_stream(method, *args, **kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._keyed(self.inner.stream_unary(method, *args, **kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._keyed(self.inner.stream_stream(method, *args, **kwargs))

    async def close(self, grace: float | None = None) -> None:
        await self.inner.close(grace)

    def __getattr__(self, name: str) -> Any:  # get_state, channel_ready, wait_for_state_change...
        return getattr(self.inner, name)
