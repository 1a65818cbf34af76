"""`shunter up` starts children without forking itself while its gRPC client is busy.

It used to start them with a ``preexec_fn`` (for the parent-death signal), which makes
CPython fork the whole process: with the registry client mid-call, gRPC skipped its fork
handlers and about one worker start in eight on a loaded machine aborted in gRPC before
exec (exit -6, "epoll_wait error: Bad file descriptor"; here 9 of 40 children started
that way died before exec, by SIGSEGV or SIGABRT, and none since). It is a race, so besides
starting many children while a real RegistryClient is busy, the test checks the cause
directly: CPython runs ``os.register_at_fork`` hooks exactly when it forks to run Python
in the child, and ``Cluster.spawn`` must never do that.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from services.cli.up_cmd import Cluster
from services.common import api_keys
from services.common.registry_client import RegistryClient
from tests.support.processes import start_redis, start_service

CHILDREN = 12


def test_children_start_by_exec_while_the_registry_client_is_busy(tmp_path: Path) -> None:
    redis = start_redis()
    _, admin_key = api_keys.new_key()
    key_file = tmp_path / "admin.key"
    key_file.write_text(admin_key)
    registry = start_service(["registry", "--redis-url", redis.url, "--admin-key-file", str(key_file),
                              "--port", "0"])
    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(os.getpid()))
    try:
        codes, outputs, calls = asyncio.run(_spawn_while_busy(registry.address, admin_key, tmp_path))
    finally:
        registry.terminate()
        redis.stop()
    assert calls > 0, "the registry client made no calls while children started"
    assert codes == [0] * CHILDREN, outputs
    assert outputs == [f"child {i} ran\n" for i in range(CHILDREN)]
    assert forks == [], "Cluster.spawn forked this process (a preexec_fn) instead of vfork/exec"


async def _spawn_while_busy(address: str, admin_key: str, run_dir: Path) -> tuple[list[int], list[str], int]:
    cluster = Cluster(argparse.Namespace(host="127.0.0.1"), run_dir)
    calls = 0
    async with RegistryClient(address, admin_key) as client:
        stop = asyncio.Event()

        async def keep_busy() -> None:
            nonlocal calls
            while not stop.is_set():
                await asyncio.gather(*(client.list_models() for _ in range(8)))
                calls += 8

        busy = asyncio.ensure_future(keep_busy())
        await asyncio.sleep(0.2)
        children = [
            await cluster.spawn(f"child-{i}", [sys.executable, "-c", f"print('child {i} ran')"])
            for i in range(CHILDREN)
        ]
        outputs = [(await child.proc.stdout.read()).decode() for child in children]
        codes = [await child.proc.wait() for child in children]
        stop.set()
        await busy
    return codes, outputs, calls
