"""deploy/k8s/overlays/tls, run for real: its TLS flags and probes on local processes.

kubectl renders the overlay; each Deployment's ``--tls-*`` flags (Secret paths pointed at
certificates made here, for the name the overlay uses) start a registry, a cluster-mode
worker and a router on this machine, and each container's exec probe, run as written,
must pass against its service. A client then infers through the router over TLS, and
the worker refuses a TLS client without a certificate (mutual TLS). Skips without kubectl.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from services.common.local_ca import LocalCa
from services.common.registry_client import RegistryClient
from services.common.tls import ClientTls
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.cluster import write_repository
from tests.support import deploy_files as d
from tests.support.processes import ROOT, start_redis, start_service

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")


def rendered_containers() -> dict[str, dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(d.K8S / "overlays" / "tls")], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]
            for o in yaml.safe_load_all(out) if o and o["kind"] == "Deployment"}


def local(args: list[str], secrets: Path) -> list[str]:
    return [a.replace("/secrets/tls/", f"{secrets}/") for a in args if a.startswith("--tls-")]


def probe_passes(container: dict, port: int, secrets: Path) -> None:
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[name]["exec"]["command"]
        assert command[:2] == ["python", "-c"]
        code = re.sub(r"localhost:\d+", f"localhost:{port}", command[2].replace("/secrets/tls/", f"{secrets}/"))
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (name, done.stderr)


def admin_call(address: str, key: str, tls: ClientTls, fn):
    async def go():
        async with RegistryClient(address, key, tls=tls) as client:
            return await fn(client)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def test_the_tls_overlay_runs_a_cluster_on_tls_with_working_probes(tmp_path):
    containers = rendered_containers()
    server_name = re.search(r"--tls-server-name=(\S+)", " ".join(containers["router"]["args"])).group(1)
    ca = LocalCa.create(tmp_path / "ca")
    issued = ca.issue(tmp_path / "ca", "shunter", [server_name, "localhost"])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    shutil.copy(issued.cert_file, secrets / "tls.crt")
    shutil.copy(issued.key_file, secrets / "tls.key")
    shutil.copy(ca.cert_file, secrets / "ca.crt")
    tls = ClientTls(ca_file=secrets / "ca.crt", server_name=server_name)

    repository = write_repository(tmp_path / "models")
    redis = start_redis()
    _, admin_key = api_keys.new_key()
    (tmp_path / "admin.key").write_text(admin_key)
    started = []
    try:
        registry = start_service(["registry", "--redis-url", redis.url, "--admin-key-file", str(tmp_path / "admin.key"),
                                  "--port", "0", *local(containers["registry"]["args"], secrets)])
        started.append(registry)
        probe_passes(containers["registry"], registry.port, secrets)
        keys = {}
        for role in ("worker", "router", "client"):
            keys[role] = tmp_path / f"{role}.key"
            keys[role].write_text(admin_call(registry.address, admin_key, tls,
                                             lambda c, r=role: c.create_api_key(f"t-{r}", role=r)).secret)
        admin_call(registry.address, admin_key, tls, lambda c: register_repository(c, repository, scan(repository)))
        worker = start_service(["worker", "--registry", registry.address, "--serve", "calc", "--trusted-repository",
                                str(repository), "--key-file", str(keys["worker"]), "--port", "0",
                                *local(containers["worker"]["args"], secrets)])
        started.append(worker)
        probe_passes(containers["worker"], worker.port, secrets)
        router = start_service(["router", "--registry", registry.address, "--admin-key-file", str(keys["router"]),
                                "--port", "0", *local(containers["router"]["args"], secrets)])
        started.append(router)
        probe_passes(containers["router"], router.port, secrets)

        request = pb.ModelInferRequest(model_name="calc", model_version="1")
        request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        options = [("grpc.ssl_target_name_override", server_name), ("grpc.use_local_subchannel_pool", 1)]
        with grpc.secure_channel(router.address, tls.credentials(), options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            metadata = api_keys.auth_metadata(keys["client"].read_text())
            for attempt in range(100):  # until the router's table lists the worker ready
                try:
                    response = stub.ModelInfer(request, metadata=metadata, timeout=20)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < 99, exc
                    time.sleep(0.2)
        assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2, 2, 2, 2]
        with grpc.secure_channel(worker.address, tls.credentials(), options=options) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no client certificate: no handshake
    finally:
        for service in reversed(started):
            service.terminate(timeout=20)
        redis.kill()
