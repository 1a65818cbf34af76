"""The unit tier's guard (tests/unit/conftest.py) refuses what belongs to integration tests."""

import socket
import subprocess
import sys

import grpc
import pytest

from tests.unit.conftest import UnitTestEscaped


def test_network_sockets_are_refused():
    with pytest.raises(UnitTestEscaped, match="connect a socket"):
        socket.create_connection(("127.0.0.1", 6379), timeout=0.1)
    with socket.socket() as sock, pytest.raises(UnitTestEscaped, match="bind a socket"):
        sock.bind(("127.0.0.1", 0))


def test_processes_and_servers_are_refused():
    with pytest.raises(UnitTestEscaped, match="start a process"):
        subprocess.run([sys.executable, "-c", "pass"])
    with pytest.raises(UnitTestEscaped, match="gRPC server"):
        grpc.aio.server()


def test_in_process_socket_pairs_still_work():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"x")
        assert right.recv(1) == b"x"
