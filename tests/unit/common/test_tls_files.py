"""TLS files: a bad pair is refused with a clear error; the reloader keeps the last good pair."""

from __future__ import annotations

import os

import pytest

from services.common.local_ca import LocalCa
from services.common.tls import CertificateReloader, ClientTls, ServerTls, TlsFileError


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return LocalCa.create(tmp_path_factory.mktemp("ca"))


def test_a_mismatched_or_unreadable_pair_is_refused(ca, tmp_path):
    one, two = ca.issue(tmp_path, "one"), ca.issue(tmp_path, "two")
    with pytest.raises(TlsFileError, match="does not belong to the certificate"):
        ServerTls(one.cert_file, two.key_file).credentials()
    with pytest.raises(TlsFileError, match="cannot read TLS key"):
        ServerTls(one.cert_file, tmp_path / "absent.key").credentials()
    with pytest.raises(ValueError, match="go together"):
        ClientTls(cert_file=one.cert_file)


def test_the_reloader_answers_none_until_the_files_change_and_skips_a_bad_pair(ca, tmp_path, caplog):
    one, two = ca.issue(tmp_path, "one"), ca.issue(tmp_path, "two")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes(one.cert_file.read_bytes())
    key.write_bytes(one.key_file.read_bytes())
    reloader = CertificateReloader(ServerTls(cert, key))
    assert reloader() is None
    cert.write_bytes(two.cert_file.read_bytes())  # the certificate first: for now, not the key's
    os.utime(cert, ns=(1, 1))
    with caplog.at_level("WARNING"):
        assert reloader() is None
    assert "keeping the previous certificate" in caplog.text
    assert reloader() is None  # reported once, not at every handshake
    key.write_bytes(two.key_file.read_bytes())
    os.utime(key, ns=(2, 2))
    assert reloader() is not None and reloader.reloads == 1
    assert reloader() is None


def test_an_encrypted_key_is_refused_with_a_clear_error(ca, tmp_path):
    from cryptography.hazmat.primitives import serialization

    issued = ca.issue(tmp_path, "locked")
    key = serialization.load_pem_private_key(issued.key_file.read_bytes(), password=None)
    locked = tmp_path / "locked-encrypted.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TlsFileError, match="encrypted"):
        ServerTls(issued.cert_file, locked).credentials()
