"""Unit tests stay units: one that opens a network socket or starts a process fails.

Anything that needs a real Redis, a server or a subprocess is an integration test
(tests/integration), where the fixtures that own those processes live. In-process
socket pairs (asyncio's self-pipe) are still allowed.
"""

from __future__ import annotations

import socket
import subprocess

import grpc
import pytest


class UnitTestEscaped(AssertionError):
    """A unit test reached outside its process."""


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise UnitTestEscaped(f"a unit test must not {what}; move it to tests/integration")

    return refuse


@pytest.fixture(scope="session", autouse=True)
def _examples_built() -> None:
    """Unit tests read the example models; building them runs a script, so it happens before the guard."""
    from tests.support.models import build_examples

    build_examples()


@pytest.fixture(autouse=True)
def _stay_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("bind a socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
    monkeypatch.setattr(grpc, "server", _refuse("start a gRPC server"))
    monkeypatch.setattr(grpc.aio, "server", _refuse("start a gRPC server"))
