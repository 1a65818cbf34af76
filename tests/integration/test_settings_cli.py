"""The service commands as a user runs them: every setting in --help, bad values exit 2 on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.common import settings as source
from services.common.server import ServerSettings
from services.registry.settings import RegistrySettings
from services.router.settings import RouterSettings
from services.worker.settings import WorkerSettings
from tests.support.processes import ROOT

SETTINGS = {"router": RouterSettings, "worker": WorkerSettings, "registry": RegistrySettings}


def shunter(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHUNTER_")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
        env={**clean, **(env or {})}, timeout=60,
    )


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_help_names_every_flag_and_variable(service):
    done = shunter(service, "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for cls in (SETTINGS[service], ServerSettings):
        for spec in source.specs(cls):
            if spec.meta.hidden:
                continue
            assert spec.flag in text
            assert spec.env(service) in text


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("router", "--registry", "127.0.0.1:1"), {"SHUNTER_ROUTER_REQUEST_TIMEOUT_S": "0", "SHUNTER_ADMIN_KEY": "k"},
         "$SHUNTER_ROUTER_REQUEST_TIMEOUT_S must be more than 0"),
        (("router", "--registry", "127.0.0.1:1", "--worker-link", "carrier-pigeon"), {},
         "argument --worker-link: invalid choice"),
        (("router",), {"SHUNTER_ROUTER_ADMIN_KEY": "k"}, "give --registry HOST:PORT"),
        (("worker", "--model-repository", "examples/models"), {"SHUNTER_WORKER_PORT": "http"},
         "$SHUNTER_WORKER_PORT: 'http' is not an integer"),
        (("worker", "--registry", "127.0.0.1:1", "--serve", "digits"), {}, "--registry needs --key-file"),
        (("registry", "--redis-url", "redis://127.0.0.1:1", "--lease-ttl-s", "0"), {},
         "--lease-ttl-s must be at least 1"),
        (("registry",), {}, "--redis-url (or SHUNTER_REDIS_URL) is required"),
    ],
)
def test_bad_settings_exit_2_with_the_reason_on_stderr(args, env, message):
    done = shunter(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "listening on" not in done.stdout


def test_a_variable_sets_what_its_flag_sets(tmp_path):
    # The registry refuses a lease TTL over its maximum whether it comes as a flag or a variable.
    by_flag = shunter("registry", "--redis-url", "redis://127.0.0.1:1", "--lease-ttl-s", "99999")
    by_env = shunter("registry", env={"SHUNTER_REGISTRY_REDIS_URL": "redis://127.0.0.1:1",
                                      "SHUNTER_REGISTRY_LEASE_TTL_S": "99999"})
    assert by_flag.returncode == by_env.returncode == 2
    assert "--lease-ttl-s must be at most 3600" in by_flag.stderr
    assert "$SHUNTER_REGISTRY_LEASE_TTL_S must be at most 3600" in by_env.stderr
