"""`shunter up` as a user runs it, and the unmodified tritonclient through its router.

Covers the cluster command (exports, summary, a dying child reported, clean SIGTERM) and
the router's protocol surface as tritonclient sees it: health, metadata, config, infer,
streaming with ids, statistics, repository index, and the auth matrix.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.router.cluster import write_repository
from tests.support.processes import ROOT, start_service


class Up:
    """A running `shunter up` and what it printed."""

    def __init__(self, proc: subprocess.Popen, env: dict[str, str], summary: list[str]) -> None:
        self.proc = proc
        self.env = env
        self.summary = summary
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in iter(self.proc.stderr.readline, ""):
            self.stderr.append(line)


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("up")
    repository = write_repository(tmp / "models")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository),
         "--workers", "2", "--port", "0", "--run-dir", str(tmp / "run")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    env: dict[str, str] = {}
    summary: list[str] = []
    deadline = time.monotonic() + 240
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
    running = Up(proc, env, summary)
    running.env_file = tmp / "run" / "env"
    yield running
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def client(up):
    with grpcclient.InferenceServerClient(up.env["SHUNTER_ROUTER"]) as client:
        yield client


def headers(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def calc_input(values: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("IN", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values.astype(np.float32))
    return tensor


def test_up_prints_exports_and_summary(up):
    assert set(up.env) == {"SHUNTER_ROUTER", "SHUNTER_REGISTRY", "SHUNTER_ADMIN_KEY", "SHUNTER_API_KEY",
                           "SHUNTER_REDIS_URL"}
    assert up.env["SHUNTER_REDIS_URL"].startswith("redis://admin:")  # the operators' ACL user
    assert up.env["SHUNTER_API_KEY"].startswith("shk_") and up.env["SHUNTER_ADMIN_KEY"].startswith("shk_")
    text = "\n".join(up.summary)
    # The same exports, for `source` in another shell (`up` itself stays in the foreground).
    assert f"#   in another shell: source {up.env_file}" in text
    assert up.env_file.read_text().splitlines() == [f"export {k}={v}" for k, v in up.env.items()]
    assert up.env_file.stat().st_mode & 0o777 == 0o600
    assert "model calc: versions 1, 2, 3 (version 3 production at 100%)" in text
    assert text.count("/metrics") == 4  # router, registry, two workers


def test_health_metadata_config(up, client):
    h = headers(up.env["SHUNTER_API_KEY"])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("calc", headers=h) and client.is_model_ready("echo", "1", headers=h)
    meta = client.get_model_metadata("calc", headers=h, as_json=True)
    assert meta["versions"] == ["1", "2", "3"]
    assert meta["inputs"] == [{"name": "IN", "datatype": "FP32", "shape": ["-1", "4"]}]
    config = client.get_model_config("echo", headers=h).config
    assert config.max_batch_size == 8 and config.input[0].name == "TEXT"
    index = client.get_model_repository_index(headers=h, as_json=True)
    assert {(m["name"], m["version"]) for m in index["models"]} == {
        ("calc", "1"), ("calc", "2"), ("calc", "3"), ("echo", "1")
    }


def test_infer_and_statistics(up, client):
    h = headers(up.env["SHUNTER_API_KEY"])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("calc", [calc_input(x)], headers=h, request_id="t-1")
    response = result.get_response()
    assert response.model_version == "3" and response.id == "t-1"  # highest version at 100 %
    np.testing.assert_allclose(result.as_numpy("OUT"), x * 3)
    result = client.infer("calc", [calc_input(x)], model_version="1", headers=h)
    np.testing.assert_allclose(result.as_numpy("OUT"), x * 2)
    text = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"abc"], ["héllo".encode()]], dtype=object))
    out = client.infer("echo", [text], headers=h, outputs=[grpcclient.InferRequestedOutput("LENGTH")])
    assert out.as_numpy("LENGTH").ravel().tolist() == [3, 6]
    stats = client.get_inference_statistics("calc", "1", headers=h).model_stats
    assert stats[0].inference_count >= 2  # two rows, summed over the workers


def test_stream_keeps_ids(up, client):
    h = headers(up.env["SHUNTER_API_KEY"])
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)), headers=h)
    try:
        for i in range(12):
            client.async_stream_infer("calc", [calc_input(np.full((1, 4), i))], request_id=f"s{i}",
                                      model_version="2")
        got = {}
        for _ in range(12):
            result, error = results.get(timeout=30)
            assert error is None, error
            got[result.get_response().id] = result.as_numpy("OUT")[0, 0]
    finally:
        client.stop_stream()
    assert got == {f"s{i}": pytest.approx(2 * i) for i in range(12)}


def test_auth_matrix(up, client):
    x = np.ones((1, 4), dtype=np.float32)
    for h, code in (({}, "UNAUTHENTICATED"), (headers("shk_0_wrong"), "UNAUTHENTICATED")):
        with pytest.raises(InferenceServerException) as info:
            client.infer("calc", [calc_input(x)], headers=h)
        assert code in str(info.value.status())
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("calc")
    assert "UNAUTHENTICATED" in str(info.value.status())
    created = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "keys", "create", "--tenant", "t", "--models", "echo", "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "SHUNTER_REGISTRY": up.env["SHUNTER_REGISTRY"],
             "SHUNTER_ADMIN_KEY": up.env["SHUNTER_ADMIN_KEY"]},
    )
    echo_only = json.loads(created.stdout)["secret"]
    deadline = time.monotonic() + 30
    while True:  # the new key reaches the router with the next routing table
        try:
            client.is_model_ready("echo", headers=headers(echo_only))
            break
        except InferenceServerException:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    with pytest.raises(InferenceServerException) as info:
        client.infer("calc", [calc_input(x)], headers=headers(echo_only))
    assert "PERMISSION_DENIED" in str(info.value.status())


def test_traffic_set_needs_no_force_for_versions_workers_serve(up):
    env = {**os.environ, **{k: up.env[k] for k in ("SHUNTER_REGISTRY", "SHUNTER_ADMIN_KEY")}}

    def shunter(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.cli.main", "traffic", "set", *args], cwd=ROOT,
                              capture_output=True, text=True, env=env, timeout=60)

    done = shunter("calc", "2=10", "3=90", "--sticky-header", "x-user-id")
    assert done.returncode == 0, done.stderr
    assert "weights:   2=10 3=90" in done.stdout and "sticky:    x-user-id" in done.stdout
    done = shunter("calc", "3=100")
    assert done.returncode == 0, done.stderr
    assert "sticky:    x-user-id" in done.stdout  # kept


def bench(up, *args: str) -> dict:
    """`shunter bench` through the router, its key from $SHUNTER_API_KEY (not the command line)."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "bench", "--model", "calc", "--concurrency", "2",
         "--duration", "0.5", "--warmup", "0", "--processes", "1", "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SHUNTER_API_KEY": up.env["SHUNTER_API_KEY"]},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["codes"] == {"OK": report["requests"]} and report["requests"] > 0, report
    return report


def router_counts(up, name: str, label: str) -> dict[str, float]:
    """A router counter for model calc, summed per value of ``label``."""
    url = next(line.split()[-1] for line in up.summary if "router   metrics" in line)
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_total{{") and 'model="calc"' in line:
            value = re.search(rf'{label}="([^"]*)"', line).group(1)
            counts[value] = counts.get(value, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_bench_random_inputs_get_past_the_cache_and_vary_header_splits_sticky_users(up, client):
    target = ("--target", up.env["SHUNTER_ROUTER"])
    env = {**os.environ, **{k: up.env[k] for k in ("SHUNTER_REGISTRY", "SHUNTER_ADMIN_KEY")}}
    subprocess.run([sys.executable, "-m", "services.cli.main", "traffic", "set", "calc", "2=50", "3=50",
                    "--sticky-header", "x-user-id", "--cache-ttl", "60"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while not router_counts(up, "shunter_router_cache", "result").get("hit"):  # the policy has reached the router
        assert time.monotonic() < deadline
        client.infer("calc", [calc_input(np.ones((1, 4)))], headers=headers(up.env["SHUNTER_API_KEY"]))
        time.sleep(0.1)
    try:
        before = router_counts(up, "shunter_router_cache", "result")
        fixed = bench(up, *target, "-H", "x-user-id=one-user")
        after_fixed = router_counts(up, "shunter_router_cache", "result")
        # One request sent again and again: after the first, the cache answers.
        assert after_fixed.get("hit", 0) - before.get("hit", 0) >= fixed["requests"] - 2
        randomised = bench(up, *target, "--random-inputs", "--vary-header", "x-user-id")
        after_random = router_counts(up, "shunter_router_cache", "result")
        # Every call a fresh input: no hits but for the probe call, which is the fixed run's request.
        assert after_random.get("hit", 0) - after_fixed.get("hit", 0) <= 1
        assert after_random["miss"] - after_fixed.get("miss", 0) >= randomised["requests"]
        assert randomised["requests_from"] == "fresh random inputs every call; x-user-id fresh every call"
        # A fresh user per call: the sticky 50/50 split sends calls to both versions.
        split_before = router_counts(up, "shunter_router_split_decisions", "version")
        bench(up, *target, "--random-inputs", "--vary-header", "x-user-id")
        split_after = router_counts(up, "shunter_router_split_decisions", "version")
        assert all(split_after.get(v, 0) > split_before.get(v, 0) for v in ("2", "3")), (split_before, split_after)
    finally:
        subprocess.run([sys.executable, "-m", "services.cli.main", "traffic", "set", "calc", "3=100", "--replace"],
                       cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)


def test_bench_over_tls_with_cacert(up, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    redis_url = re.search(r"redis (redis://\S+)", "\n".join(up.summary)).group(1)
    router = start_service(
        ["router", "--registry", up.env["SHUNTER_REGISTRY"], "--redis-url", redis_url, "--port", "0",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        env={"SHUNTER_ADMIN_KEY": up.env["SHUNTER_ADMIN_KEY"]},
    )
    try:
        bench(up, "--target", router.address, "--cacert", str(cert))
        plain = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "bench", "--target", router.address, "--model", "calc",
             "--duration", "0.5"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "SHUNTER_API_KEY": up.env["SHUNTER_API_KEY"]},
        )
        assert plain.returncode == 2 and "a TLS server needs --tls or --cacert" in plain.stderr
    finally:
        router.terminate()


def test_dead_children_reported_and_restarted_then_sigterm_stops_everything(up):
    children = psutil.Process(up.proc.pid).children()
    workers = [c for c in children if "worker" in c.cmdline()]
    assert len(workers) == 2 and len(children) == 5  # redis, registry, 2 workers, router
    workers[0].kill()
    deadline = time.monotonic() + 30
    while not any(f"(pid {workers[0].pid}) exited" in line for line in up.stderr):
        assert time.monotonic() < deadline, "".join(up.stderr)
        time.sleep(0.1)
    assert up.proc.poll() is None  # a worker's death is reported; the cluster keeps running
    deadline = time.monotonic() + 120  # backoff, then the new worker loads its models
    while not any("worker-" in line and " restarted (pid " in line for line in up.stderr):
        assert time.monotonic() < deadline, "".join(up.stderr)
        time.sleep(0.1)
    assert any("restarting worker-" in line and "(restart 1)" in line for line in up.stderr)
    children = psutil.Process(up.proc.pid).children()
    assert len([c for c in children if "worker" in c.cmdline()]) == 2
    # Redis too comes back, on its port, with its data (append-only file in the run dir).
    redis = next(c for c in children if "redis-server" in c.name())
    redis.kill()
    deadline = time.monotonic() + 60
    while not any(line.startswith("# shunter up: redis restarted (pid ") for line in up.stderr):
        assert time.monotonic() < deadline, "".join(up.stderr)
        time.sleep(0.1)
    listed = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "models", "list"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **{k: up.env[k] for k in ("SHUNTER_REGISTRY", "SHUNTER_ADMIN_KEY")}}, timeout=60,
    )
    assert listed.returncode == 0 and "calc" in listed.stdout, listed.stderr
    children = psutil.Process(up.proc.pid).children()
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
