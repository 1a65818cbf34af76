"""The Redis start lines of deploy/ (compose and Kubernetes) run in a real shell against a
real redis-server: the ACL file they write loads, anonymous clients are refused, each
service's user works within its keys only, and the rules are the ones `shunter up` uses."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from services.cli.up_redis import service_users
from tests.integration.deploy.test_compose import ENV, compose_config
from tests.support.processes import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parents[3]
PASSWORDS = {"registry": "a1" * 24, "router": "b2" * 24, "admin": "c3" * 24}


def compose_redis_line() -> tuple[str, dict[str, str]]:
    env = {**ENV, **{f"SHUNTER_REDIS_{u.upper()}_PASSWORD": p for u, p in PASSWORDS.items()}}
    result = compose_config(env=env)
    assert result.returncode == 0, result.stderr
    service = yaml.safe_load(result.stdout)["services"]["redis"]
    # `config` prints the file's $$ (a literal $ for the container's shell) as it is.
    return service["command"][0].replace("$$", "$"), dict(service["environment"])


def k8s_redis_line() -> tuple[str, dict[str, str]]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / "redis.yaml").read_text()))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    by_key = {"admin-password": PASSWORDS["admin"], "registry-password": PASSWORDS["registry"],
              "router-password": PASSWORDS["router"]}
    env = {e["name"]: by_key[e["valueFrom"]["secretKeyRef"]["key"]] for e in container["env"]}
    # Kubernetes turns $$ into $ in args (and expands $(VAR) references, none here).
    return container["args"][0].replace("$$", "$"), env


def run_line(line: str, env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    line = line.replace("/tmp/users.acl", str(tmp_path / "users.acl")).replace(
        "exec redis-server", f"exec {shlex.quote(redis_server_binary())} --port {port} --bind 127.0.0.1 "
        f"--dir {tmp_path} --save ''")
    proc = subprocess.Popen(["sh", "-c", line], env={"PATH": "/usr/bin:/bin", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"redis start line failed: {proc.stderr.read()}")
        try:
            redis.Redis(host="127.0.0.1", port=port, username="admin", password=PASSWORDS["admin"],
                        retry=None).ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("redis did not start from the deploy line")


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_deploy_redis_users(where, tmp_path):
    line, env = compose_redis_line() if where == "compose" else k8s_redis_line()
    # The same rules as `shunter up`'s (one source: services/cli/up_redis.py).
    for user in service_users().values():
        assert re.search(rf"user {user.name} on #\S*\(h [^)]*\) {re.escape(user.rules)}\"", line), user.name
    proc, port = run_line(line, env, tmp_path)
    try:
        acl = (tmp_path / "users.acl").read_text()
        assert not any(p in acl for p in PASSWORDS.values())  # hashes only
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, retry=None).ping()

        def user(name: str) -> redis.Redis:
            return redis.Redis(host="127.0.0.1", port=port, username=name, password=PASSWORDS[name], retry=None)

        registry, router = user("registry"), user("router")
        assert registry.incr("shunter:registry:revision") == 1
        script = registry.register_script("return redis.call('INCR', KEYS[1])")
        assert script(keys=["shunter:registry:revision"]) == 2
        assert registry.publish("shunter:registry:events", "1") == 0
        assert router.set("shunter:rl:k", "1") and router.get("shunter:cache:x") is None
        with pytest.raises(redis.exceptions.NoPermissionError):
            router.get("shunter:registry:revision")
        with pytest.raises(redis.exceptions.NoPermissionError):
            registry.flushall()
    finally:
        proc.kill()
        proc.wait()
