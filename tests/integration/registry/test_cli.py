"""The operators' CLI end to end: `shunter models|versions|traffic|keys|workers` as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.common import artifacts
from tests.integration.registry.helpers import CONFIG_YAML
from tests.support.processes import ROOT


@pytest.fixture(scope="module")
def shunter(registry, admin):
    env = {**os.environ, "SHUNTER_REGISTRY": registry.address, "SHUNTER_ADMIN_KEY": admin.key}

    def run(*args: str, ok: bool = True, env_override: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
            env={**env, **(env_override or {})}, timeout=60,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
        else:
            assert proc.returncode == 1, proc.stdout
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one clear line
        return proc

    return run


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo") / "demo"
    (root / "1").mkdir(parents=True)
    (root / "1" / "model.onnx").write_bytes(b"one")
    (root / "2").mkdir()
    (root / "2" / "model.onnx").write_bytes(b"two")
    (root / "config.yaml").write_text(CONFIG_YAML)
    return root


def test_models_and_versions(shunter, repo):
    out = shunter("models", "register", "demo", "--version", "1", "--artifact", str(repo / "1"),
                  "--config", str(repo / "config.yaml")).stdout
    # The first version takes all traffic, and its state says so.
    assert out.startswith("registered demo version 1 (onnx, production) sha256 ")
    assert artifacts.sha256_of(repo / "1") in out
    registered = json.loads(shunter("models", "register", "demo", "--version", "2", "--artifact",
                                    str(repo / "2" / "model.onnx"), "--config", str(repo / "config.yaml"),
                                    "--state", "canary", "--json").stdout)
    assert registered["sha256"] == artifacts.sha256_of(repo / "2" / "model.onnx")
    # States follow traffic: a version without weight is staged whatever was asked.
    assert registered["state"] == "STAGED" and registered["artifact_uri"].startswith("file:///")

    listed = shunter("models", "list").stdout.splitlines()
    assert listed[0].split() == ["MODEL", "VERSIONS", "ARCHIVED", "TRAFFIC"]
    assert listed[1].split() == ["demo", "1:production", "2:staged", "0", "1=100"]

    # A state the policy contradicts is refused, naming the commands that move traffic.
    failed = shunter("versions", "set-state", "demo", "2", "production", ok=False)
    assert "states follow the traffic policy" in failed.stderr and "FAILED_PRECONDITION" in failed.stderr
    shunter("traffic", "set", "demo", "1=50", "2=50", "--force")
    shown = json.loads(shunter("models", "show", "demo", "--json").stdout)
    assert [(v["version"], v["state"]) for v in shown["versions"]] == [("1", "CANARY"), ("2", "PRODUCTION")]
    table = shunter("models", "show", "demo").stdout
    assert "VERSION  STATE" in table and "production" in table
    shunter("traffic", "set", "demo", "1=100", "--force")

    failed = shunter("versions", "set-state", "demo", "1", "archived", ok=False)
    assert "still carries traffic" in failed.stderr and "INVALID_ARGUMENT" in failed.stderr
    failed = shunter("models", "show", "nope", ok=False)
    assert "model 'nope' is not registered [NOT_FOUND]" in failed.stderr


def test_traffic(shunter, repo):
    # No worker serves demo in this module, so weight on a version needs --force.
    failed = shunter("traffic", "set", "demo", "1=90", "2=10", ok=False)
    assert "no worker reports demo version(s) 1, 2 ready" in failed.stderr and "--force" in failed.stderr
    out = shunter("traffic", "set", "demo", "1=90", "2=10", "--sticky-header", "x-user-id",
                  "--fallback", "1", "--cache-ttl", "60", "--force").stdout
    assert "weights:   1=90 2=10" in out and "cache:     on, ttl 60s" in out
    shown = json.loads(shunter("traffic", "show", "demo", "--json").stdout)
    assert shown["weights"] == {"1": 90, "2": 10}
    assert (shown["sticky_header"], shown["fallback_version"], shown["cache_ttl_s"]) == ("x-user-id", "1", 60)
    failed = shunter("traffic", "set", "demo", "1=90", "2=20", "--force", ok=False)
    assert "weights must sum to 100, got 110" in failed.stderr
    failed = shunter("traffic", "set", "demo", "1=100", "--shadow", "1", "--force", ok=False)
    assert "shadow version 1 also has weight 100" in failed.stderr
    # Blue-green: one write flips all traffic, and keeps the sticky header, fallback and cache.
    shunter("traffic", "set", "demo", "1=0", "2=100", "--force")
    shown = json.loads(shunter("traffic", "show", "demo", "--json").stdout)
    assert shown["weights"] == {"1": 0, "2": 100} or shown["weights"] == {"2": 100}
    assert (shown["sticky_header"], shown["fallback_version"], shown["cache_ttl_s"]) == ("x-user-id", "1", 60)
    assert "weights:   2=100" in shunter("traffic", "show", "demo").stdout
    # An option alone changes only itself; '' clears it.
    shunter("traffic", "set", "demo", "--sticky-header", "")
    shown = json.loads(shunter("traffic", "show", "demo", "--json").stdout)
    assert shown.get("sticky_header", "") == "" and shown["fallback_version"] == "1"
    # --replace is the old behaviour: what is not given is cleared.
    shunter("traffic", "set", "demo", "2=100", "--replace", "--force")
    shown = json.loads(shunter("traffic", "show", "demo", "--json").stdout)
    assert shown.get("fallback_version", "") == "" and shown.get("cache_ttl_s", 0) == 0
    failed = shunter("traffic", "set", "demo", ok=False)
    assert "nothing to change" in failed.stderr


def test_keys(shunter, registry, admin):
    created = json.loads(shunter("keys", "create", "--tenant", "acme", "--models", "demo", "--rate", "600/m",
                                 "--json").stdout)
    secret, key_id = created["secret"], created["key"]["key_id"]
    assert secret.startswith(f"shk_{key_id}_") and created["key"]["rate"]["per_second"] == 10
    human = shunter("keys", "create", "--tenant", "ops", "--admin", "--registry", registry.address)
    assert "key: shk_" in human.stdout and "shown" not in human.stdout and "hash" in human.stderr

    listed = shunter("keys", "list").stdout
    assert "acme" in listed and "ops" in listed and "10/s" in listed and secret not in listed
    listed_json = json.loads(shunter("keys", "list", "--json").stdout)
    assert {k["tenant"] for k in listed_json} >= {"acme", "ops", "bootstrap"}
    assert all("secret" not in k for k in listed_json)

    # The data key is not an admin key.
    failed = shunter("models", "list", ok=False, env_override={"SHUNTER_ADMIN_KEY": secret})
    assert "PERMISSION_DENIED" in failed.stderr
    assert f"revoked key {key_id}" in shunter("keys", "revoke", key_id).stdout
    failed = shunter("models", "list", ok=False, env_override={"SHUNTER_ADMIN_KEY": secret})
    assert "UNAUTHENTICATED" in failed.stderr
    failed = shunter("keys", "create", "--tenant", "x", "--rate", "fast", ok=False)
    assert "rate 'fast' is not N/s" in failed.stderr


def test_workers_and_errors(shunter):
    assert json.loads(shunter("workers", "list", "--json").stdout) == []
    assert shunter("workers", "list").stdout.split()[:2] == ["WORKER", "ADDRESS"]
    failed = shunter("workers", "list", ok=False, env_override={"SHUNTER_ADMIN_KEY": ""})
    assert "no admin key" in failed.stderr
    failed = shunter("workers", "list", "--registry", "127.0.0.1:1", ok=False)
    assert "cannot reach the registry at 127.0.0.1:1" in failed.stderr
