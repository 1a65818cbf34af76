"""rediss:// with mutual TLS: a real redis-server on a TLS-only port, certificates made here."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common import redis_connect
from services.common.registry_client import RegistryClient
from services.router.limiter import RateLimiter
from services.router.redis_link import RedisLink
from tests.integration.registry.helpers import register_model, unique
from tests.integration.registry.replicated import start_registry
from tests.support.processes import free_port, redis_server_binary

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "1", "-subj", f"/CN={name}", cwd=directory)


def make_cert(directory: Path, ca: str, name: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", "ext", cwd=directory)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> Iterator[tuple[int, Path, str]]:
    certs = tmp_path_factory.mktemp("certs")
    make_ca(certs, "ca")
    make_ca(certs, "other-ca")
    make_cert(certs, "ca", "server")
    make_cert(certs, "ca", "client")
    port = free_port()
    proc = subprocess.Popen([
        redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--dir", str(certs), "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file",
        str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.pem"), "--tls-auth-clients", "yes",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ca={certs}/ca.pem&cert={certs}/client.pem&key={certs}/client.key"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(certs / "ca.pem"),
                        ssl_certfile=str(certs / "client.pem"), ssl_keyfile=str(certs / "client.key"),
                        retry=None).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "TLS redis-server did not start"
            time.sleep(0.05)
    yield port, certs, url
    proc.kill()
    proc.wait()


async def test_registry_and_limiter_over_mutual_tls(tls_redis, admin, tmp_path):
    _port, _certs, url = tls_redis
    registry = start_registry(url, admin)
    try:
        model = unique("t")
        async with RegistryClient(registry.address, admin.key) as client:
            await register_model(client, tmp_path, model, versions=1)
            assert model in {m.name for m in await client.list_models()}
    finally:
        registry.terminate()
    link = RedisLink(url, timeout_s=2.0)
    try:
        limiter = RateLimiter(link, "shunter:")
        assert await limiter.acquire("tls", per_second=0.5, burst=1) == 0.0
        assert await limiter.acquire("tls", per_second=0.5, burst=1) > 0 and limiter.local._tat == {}
    finally:
        await link.close()


@pytest.mark.parametrize("case", ["plaintext", "wrong CA", "no client certificate"])
async def test_redis_over_tls_refuses_what_it_should(tls_redis, case):
    port, certs, url = tls_redis
    bad = {
        "plaintext": f"redis://127.0.0.1:{port}/0",
        "wrong CA": url.replace(f"{certs}/ca.pem", f"{certs}/other-ca.pem"),
        "no client certificate": f"rediss://127.0.0.1:{port}/0?ca={certs}/ca.pem",
    }[case]
    client = redis_connect.connect(bad, socket_timeout=2, socket_connect_timeout=2, retry=None)
    try:
        with pytest.raises(redis_connect.OUTAGE_ERRORS):
            await client.ping()
    finally:
        await client.aclose()
