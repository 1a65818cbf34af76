"""`shunter up --tls`: a local CA, every hop on TLS, and no child holding the admin key.

Runs the real command, then checks each hop from outside: the router over TLS with the
printed CA, plaintext refused by router, registry and worker, the worker refusing a TLS
client without a certificate (mutual TLS), and the admin CLI working through
``SHUNTER_TLS_CA``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.cluster import write_repository
from tests.support.processes import ROOT

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("up-tls")
    repository = write_repository(tmp / "models")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository), "--workers", "1",
         "--port", "0", "--run-dir", str(tmp / "run"), "--tls"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "SHUNTER_ADMIN_KEY": ""},
    )
    env: dict[str, str] = {}
    summary: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"shunter up exited with {proc.wait()}:\n{proc.stderr.read()}")
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                env[name] = value
            else:
                summary.append(line.rstrip())
            if line.startswith("# Ctrl-C"):
                break
        yield proc, env, summary, tmp / "run"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def calc_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="calc", model_version="1")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).reshape(1, 4).tobytes())
    return request


def infer(address: str, creds: grpc.ChannelCredentials | None, key: str) -> pb.ModelInferResponse:
    channel = (grpc.secure_channel(address, creds, options=OWN_CONNECTION) if creds is not None
               else grpc.insecure_channel(address, options=OWN_CONNECTION))
    with channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            calc_request(), metadata=(("authorization", f"Bearer {key}"),), timeout=20)


def refused(address: str, creds: grpc.ChannelCredentials | None, key: str) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        infer(address, creds, key)
    return caught.value.code()


def test_the_ca_is_printed_and_exported(up):
    _, env, summary, run_dir = up
    ca = Path(env["SHUNTER_TLS_CA"])
    assert ca == (run_dir / "tls" / "ca.pem").resolve() or ca == run_dir / "tls" / "ca.pem"
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert any(f"TLS: CA {ca}" in line for line in summary), summary


def test_every_hop_refuses_plaintext_and_the_router_serves_over_tls(up):
    _, env, summary, _ = up
    creds = grpc.ssl_channel_credentials(Path(env["SHUNTER_TLS_CA"]).read_bytes())
    response = infer(env["SHUNTER_ROUTER"], creds, env["SHUNTER_API_KEY"])
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [0, 2, 4, 6]
    worker = re.search(r"#   worker-1 (\S+)", "\n".join(summary)).group(1)
    for address in (env["SHUNTER_ROUTER"], worker, env["SHUNTER_REGISTRY"]):
        assert refused(address, None, env["SHUNTER_ADMIN_KEY"]) == grpc.StatusCode.UNAVAILABLE, address
    # Workers are on mutual TLS: trusting the CA is not enough without a certificate it signed.
    assert refused(worker, creds, env["SHUNTER_ADMIN_KEY"]) == grpc.StatusCode.UNAVAILABLE


def test_the_admin_cli_works_through_shunter_tls_ca(up):
    _, env, _, _ = up
    base = {**os.environ, "SHUNTER_REGISTRY": env["SHUNTER_REGISTRY"], "SHUNTER_ADMIN_KEY": env["SHUNTER_ADMIN_KEY"]}
    listed = subprocess.run([sys.executable, "-m", "services.cli.main", "models", "list"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**base, "SHUNTER_TLS_CA": env["SHUNTER_TLS_CA"]})
    assert listed.returncode == 0 and "calc" in listed.stdout, listed.stderr
    plain = subprocess.run([sys.executable, "-m", "services.cli.main", "models", "list"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60, env={**base, "SHUNTER_TLS_CA": ""})
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


def test_no_child_holds_the_admin_key(up):
    proc, env, _, run_dir = up
    admin = env["SHUNTER_ADMIN_KEY"]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4  # redis, registry, worker, router
    for child in children:
        assert admin not in " ".join(child.cmdline())
        assert child.environ().get("SHUNTER_ADMIN_KEY", "") != admin, child.cmdline()
    keys = subprocess.run([sys.executable, "-m", "services.cli.main", "keys", "list"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})
    roles = {line.split()[1]: line.split()[-1] for line in keys.stdout.splitlines()[1:]}
    assert roles["shunter-workers"] == "worker" and roles["shunter-routers"] == "router", keys.stdout
    for name in ("worker.key", "router.key"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o600


def test_a_batch_job_reaches_the_tls_router_with_shunter_tls_ca(up, tmp_path):
    _, env, _, _ = up
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"IN": [float(i)] * 4}) + "\n" for i in range(20)))
    job = [sys.executable, "-m", "services.cli.main", "batch", "calc", "--input", str(source), "--no-progress",
           "--target", env["SHUNTER_ROUTER"], "--version", "1"]
    done = subprocess.run([*job, "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    plain = subprocess.run([*job, "--output", str(tmp_path / "plain")], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env={**os.environ, **env, "SHUNTER_TLS_CA": ""})
    assert plain.returncode != 0
