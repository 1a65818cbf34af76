"""A local certificate authority for `shunter up --tls` and tests: one CA, certificates it signs.

Not a PKI: keys are written unencrypted (mode 0600) next to the certificates, for a cluster
on one machine or a test. Certificates carry both serverAuth and clientAuth, so one
certificate per service serves TLS and presents itself for mutual TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 30


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(pem)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class LocalCa:
    """A CA whose certificate and key live in ``directory`` (``ca.pem``, ``ca.key``)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_file: Path) -> None:
        self.cert = cert
        self.key = key
        self.cert_file = cert_file

    @classmethod
    def create(cls, directory: Path, name: str = "Shunter local CA", days: int = DEFAULT_DAYS) -> LocalCa:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        cert_file = directory / "ca.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(directory / "ca.key", key)
        return cls(cert, key, cert_file)

    def issue(
        self, directory: Path, name: str, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = DEFAULT_DAYS,
    ) -> Issued:
        """``<name>.pem`` and ``<name>.key`` in ``directory``, valid for ``hosts`` (IPs or DNS names)."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_file, key)
        return Issued(cert_file, key_file)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.common.local_ca DIR [HOST...]``: a CA and one certificate in DIR."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.common.local_ca", description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("hosts", nargs="*", default=["127.0.0.1", "localhost"],
                        help="names and addresses the certificate is valid for (default 127.0.0.1 localhost)")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    ca = LocalCa.create(args.directory, days=args.days)
    issued = ca.issue(args.directory, "shunter", args.hosts, days=args.days)
    print(f"CA {ca.cert_file} (key {args.directory / 'ca.key'}); certificate {issued.cert_file}, key {issued.key_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
