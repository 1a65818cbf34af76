"""Fixtures for registry tests: a private redis-server, an admin key file, registries.

Each test module gets its own Redis (AOF on, appendfsync always) and registry, so a
module can count revisions without another module's writes or lease expiries in the way.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import RedisServer, ServiceProcess, start_redis, start_service


@dataclass
class AdminKey:
    key: str
    path: Path


def start_registry(redis: RedisServer, admin: AdminKey, *extra: str, port: int = 0) -> ServiceProcess:
    return start_service([
        "registry", "--redis-url", redis.url, "--port", str(port), "--admin-key-file", str(admin.path),
        "--grace-s", "5", *extra,
    ])


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis(appendonly=True)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> AdminKey:
    key = f"adm-{secrets.token_urlsafe(24)}"
    path = tmp_path_factory.mktemp("admin") / "admin.key"
    path.write_text(key + "\n")
    return AdminKey(key, path)


@pytest.fixture(scope="module")
def registry(redis_server: RedisServer, admin: AdminKey) -> Iterator[ServiceProcess]:
    proc = start_registry(redis_server, admin)
    yield proc
    proc.terminate()
