"""TLS on a real worker: plaintext and a wrong CA refused, mutual TLS, rotation without a restart.

Certificates are made in the test (services/common/local_ca.py, on the cryptography
library). Each check opens connections of its own (a local subchannel pool), so every
call that should handshake does.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common.local_ca import LocalCa
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.cluster import write_repository
from tests.support.processes import start_service

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def calc_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="calc", model_version="1")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).reshape(1, 4).tobytes())
    return request


def credentials(ca: Path | bytes, client=None) -> grpc.ChannelCredentials:
    roots = ca if isinstance(ca, bytes) else ca.read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials(roots, client.key_file.read_bytes(), client.cert_file.read_bytes())


async def infer(address: str, creds: grpc.ChannelCredentials | None, count: int = 1) -> None:
    if creds is None:
        channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
    else:
        channel = grpc.aio.secure_channel(address, creds, options=OWN_CONNECTION)
    async with channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(count):
            response = await stub.ModelInfer(calc_request(), timeout=10)
            assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [0, 2, 4, 6]


async def refused(address: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await infer(address, creds)
    return caught.value.code()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca, other = LocalCa.create(root / "ca"), LocalCa.create(root / "other", name="Someone else's CA")
    return root, ca, other


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return write_repository(tmp_path_factory.mktemp("models"))


def tls_worker(repository: Path, cert, *extra: str):
    return start_service(["worker", "--model-repository", str(repository), "--models", "calc", "--port", "0",
                          "--tls-cert", str(cert.cert_file), "--tls-key", str(cert.key_file), *extra])


async def test_tls_refuses_plaintext_and_a_wrong_ca(pki, repository):
    root, ca, other = pki
    worker = tls_worker(repository, ca.issue(root / "w1", "worker"))
    try:
        await infer(worker.address, credentials(ca.cert_file), count=3)
        assert await refused(worker.address, None) == grpc.StatusCode.UNAVAILABLE
        assert await refused(worker.address, credentials(other.cert_file)) == grpc.StatusCode.UNAVAILABLE
    finally:
        worker.terminate(timeout=20)


async def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(pki, repository):
    root, ca, other = pki
    worker = tls_worker(repository, ca.issue(root / "w2", "worker"), "--tls-client-ca", str(ca.cert_file))
    try:
        await infer(worker.address, credentials(ca.cert_file, ca.issue(root / "c", "router")))
        assert await refused(worker.address, credentials(ca.cert_file)) == grpc.StatusCode.UNAVAILABLE
        stranger = other.issue(root / "stranger", "router")
        assert await refused(worker.address, credentials(ca.cert_file, stranger)) == grpc.StatusCode.UNAVAILABLE
    finally:
        worker.terminate(timeout=20)


def test_a_bad_certificate_file_is_a_usage_error(pki, repository, tmp_path):
    import subprocess
    import sys

    from tests.support.processes import ROOT

    root, ca, _ = pki
    good = ca.issue(root / "w3", "worker")
    other = ca.issue(root / "w4", "other")
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    for cert, key, message in ((broken, good.key_file, "is not PEM"),
                               (good.cert_file, other.key_file, "does not belong to the certificate"),
                               (tmp_path / "missing.pem", good.key_file, "cannot read TLS certificate")):
        done = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "worker", "--model-repository", str(repository),
             "--models", "calc", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
    half = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "worker", "--model-repository", str(repository),
         "--tls-cert", str(good.cert_file)], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr


async def test_rotation_mid_load_loses_no_request(pki, repository, tmp_path):
    """New files are served from the next handshake on; open connections and requests are not disturbed."""
    root, first_ca, second_ca = pki
    live = tmp_path / "live"
    live.mkdir()
    first = first_ca.issue(root / "rot1", "worker")
    second = second_ca.issue(root / "rot2", "worker")
    cert, key = live / "worker.pem", live / "worker.key"
    cert.write_bytes(first.cert_file.read_bytes())
    key.write_bytes(first.key_file.read_bytes())
    worker = start_service(["worker", "--model-repository", str(repository), "--models", "calc", "--port", "0",
                            "--tls-cert", str(cert), "--tls-key", str(key)])
    both = credentials(first_ca.cert_file.read_bytes() + second_ca.cert_file.read_bytes())
    try:
        assert await refused(worker.address, credentials(second_ca.cert_file)) == grpc.StatusCode.UNAVAILABLE
        stop = asyncio.Event()
        done: list[int] = []
        failures: list[BaseException] = []
        goal = [100]
        reached = asyncio.Event()

        async def client() -> None:
            # A fresh connection every few requests, so handshakes happen across the rotation.
            while not stop.is_set():
                try:
                    await infer(worker.address, both, count=5)
                    done.append(5)
                except BaseException as exc:
                    failures.append(exc)
                    reached.set()
                    return
                if sum(done) >= goal[0]:
                    reached.set()

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.wait_for(reached.wait(), 60)
        # Replace the files the way a secret mount or cert-manager does: whole files renamed in,
        # the certificate first (for a moment it does not match the key: the old pair is kept).
        for source, target in ((second.cert_file, cert), (second.key_file, key)):
            staged = target.with_suffix(".new")
            staged.write_bytes(source.read_bytes())
            os.replace(staged, target)
        goal[0] = sum(done) + 100
        reached.clear()
        # Only the new CA now: this handshake succeeds only against the new certificate.
        await infer(worker.address, credentials(second_ca.cert_file), count=2)
        await asyncio.wait_for(reached.wait(), 60)
        stop.set()
        await asyncio.gather(*clients)
        assert not failures, failures[:3]
        assert await refused(worker.address, credentials(first_ca.cert_file)) == grpc.StatusCode.UNAVAILABLE
        assert "TLS certificate reloaded" in worker.logs()
    finally:
        worker.terminate(timeout=20)


async def test_a_service_channel_picks_up_new_client_files_for_new_calls(pki, repository, tmp_path, monkeypatch):
    """Mutual TLS with the client certificate and the server's client CA both rotated: the
    channel's next call handshakes with the new certificate, which the server now requires."""
    from services.common import tls as tls_module
    from services.common.tls import ClientTls

    root, first_ca, second_ca = pki
    live = tmp_path / "live"
    live.mkdir()
    server = first_ca.issue(root / "srv", "worker")
    client_ca = live / "client-ca.pem"
    client_ca.write_bytes(first_ca.cert_file.read_bytes())
    worker = tls_worker(repository, server, "--tls-client-ca", str(client_ca))
    cert, key = live / "client.pem", live / "client.key"
    old, new = first_ca.issue(root / "old", "router"), second_ca.issue(root / "new", "router")
    cert.write_bytes(old.cert_file.read_bytes())
    key.write_bytes(old.key_file.read_bytes())
    monkeypatch.setattr(tls_module, "RELOAD_CHECK_S", 0.0)
    channel = tls_module.channel(worker.address, options=OWN_CONNECTION,
                                 tls=ClientTls(ca_file=first_ca.cert_file, cert_file=cert, key_file=key))
    try:
        infer_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                         request_serializer=pb.ModelInferRequest.SerializeToString,
                                         response_deserializer=pb.ModelInferResponse.FromString)
        assert (await infer_call(calc_request(), timeout=10)).raw_output_contents
        first_inner = channel.inner
        for source, target in ((second_ca.cert_file, client_ca), (new.cert_file, cert), (new.key_file, key)):
            staged = target.with_suffix(".new")
            staged.write_bytes(source.read_bytes())
            os.replace(staged, target)
        # The old certificate no longer gets a new connection in...
        assert await refused(worker.address, credentials(first_ca.cert_file, old)) == grpc.StatusCode.UNAVAILABLE
        # ...and the channel's next call opens one with the new files.
        assert (await infer_call(calc_request(), timeout=10)).raw_output_contents
        assert channel.inner is not first_inner and channel.generation == 1
    finally:
        await channel.close()
        worker.terminate(timeout=20)


@pytest.mark.parametrize("link", ["stream", "unary"])
async def test_the_router_transport_speaks_mutual_tls_on_both_links(pki, repository, link):
    import time

    from services.common.tls import ClientTls
    from services.router.worker_client import Forward, UpstreamError, WorkerTransport

    root, ca, _ = pki
    worker = tls_worker(repository, ca.issue(root / f"link-{link}", "worker"), "--tls-client-ca", str(ca.cert_file))
    router = ca.issue(root / f"router-{link}", "router")
    raw = Forward(calc_request().SerializeToString(), deadline=time.monotonic() + 120)
    mutual = WorkerTransport(worker.address, 1 << 20, link,
                             tls=ClientTls(ca_file=ca.cert_file, cert_file=router.cert_file, key_file=router.key_file))
    anonymous = WorkerTransport(worker.address, 1 << 20, link, tls=ClientTls(ca_file=ca.cert_file))
    try:
        for _ in range(5):
            response = pb.ModelInferResponse.FromString(await mutual.infer(raw, 10.0))
            assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [0, 2, 4, 6]
        with pytest.raises(UpstreamError) as refused:
            await anonymous.infer(raw, 10.0)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await mutual.close()
        await anonymous.close()
        worker.terminate(timeout=20)
