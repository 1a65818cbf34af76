"""`shunter bench` as a user runs it: simulated users on a sticky split, and TLS like the other tools.

``--vary-header NAME --users N`` must give each simulated user one stable value, so a
router with a sticky split keeps each user on one version for the whole run (and the
report says so, from the versions that answered). TLS goes through services/common/tls.py
and, like `shunter models|traffic|keys`, trusts ``$SHUNTER_TLS_CA`` without a flag.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.common.local_ca import LocalCa
from tests.integration.router.cluster import start_cluster, write_repository
from tests.support.processes import ROOT, start_service


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "bench", "--model", "calc", "--concurrency", "4",
         "--duration", "0.5", "--warmup", "0", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SHUNTER_TLS_CA": "", **(env or {})},
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = start_cluster(tmp_path_factory.mktemp("cluster"), workers=1, routers=1)
    yield running
    running.stop()


def test_each_simulated_user_stays_on_its_sticky_variant(cluster):
    cluster.set_policy("calc", {"2": 50, "3": 50}, sticky_header="x-user-id")
    done = bench("--target", cluster.routers[0].address, "--vary-header", "x-user-id", "--users", "8",
                 "--processes", "2", "--json", env={"SHUNTER_API_KEY": cluster.keys["data"]})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["codes"] == {"OK": report["requests"]} and report["requests"] >= 8, report
    users = report["users"]
    assert users["count"] == 8 and set(users["versions"]) == {f"bench-user-{i}" for i in range(8)}
    # Every user answered by one version all run long, and the eight users are split over both.
    assert users["on_one_version"] == 8, users
    assert set(users["calls_by_version"]) == {"2", "3"}, users
    assert sum(users["calls_by_version"].values()) == report["requests"]
    assert report["requests_from"] == "one request, sent every call; x-user-id from 8 simulated user(s) in turn"


def test_the_table_names_what_the_users_saw(cluster):
    cluster.set_policy("calc", {"3": 100}, sticky_header="x-user-id")
    done = bench("--target", cluster.routers[0].address, "--vary-header", "x-user-id", "--users", "3",
                 "--processes", "1", env={"SHUNTER_API_KEY": cluster.keys["data"]})
    assert done.returncode == 0, done.stderr
    assert "Simulated users: 3, 3 answered by one version throughout; OK calls by version: 3=" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--users", "4"), "--users needs --vary-header NAME"),
    (("--users", "-1", "--vary-header", "x-user-id"), "--users must be >= 1, got -1"),
])
def test_users_without_a_header_or_below_one_is_a_usage_error(args, message):
    done = bench("--target", "127.0.0.1:1", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


@pytest.fixture(scope="module")
def tls_worker(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = LocalCa.create(root / "ca")
    cert = ca.issue(root / "worker", "worker", hosts=["127.0.0.1", "localhost"])
    worker = start_service(["worker", "--model-repository", str(write_repository(root / "models")),
                            "--models", "calc", "--port", "0",
                            "--tls-cert", str(cert.cert_file), "--tls-key", str(cert.key_file)])
    yield worker, ca
    worker.terminate()


def test_bench_trusts_shunter_tls_ca_like_the_other_tools(tls_worker, tmp_path):
    worker, ca = tls_worker
    done = bench("--target", worker.address, "--processes", "2", "--json",
                 env={"SHUNTER_TLS_CA": str(ca.cert_file)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["codes"] == {"OK": report["requests"]} and report["requests"] > 0
    # The flag still wins, and a CA file that is not PEM is named, exit 2, before any load.
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("hello\n")
    done = bench("--target", worker.address, "--cacert", str(bad), env={"SHUNTER_TLS_CA": str(ca.cert_file)})
    assert done.returncode == 2 and f"--cacert: TLS CA {bad} is not PEM" in done.stderr, done.stderr
