"""The admission flags of `shunter worker` and `shunter router` (generated from their settings):
bad values, from a flag or the environment, exit 2 naming the flag or variable."""

from __future__ import annotations

import pytest

from services.cli.main import main

ROUTER = ["router", "--registry", "127.0.0.1:1", "--admin-key", "k"]
WORKER = ["worker", "--model-repository", "/nonexistent"]


@pytest.mark.parametrize(
    "argv, named",
    [
        ([*WORKER, "--max-in-flight", "-1"], "--max-in-flight must be at least 0"),
        ([*WORKER, "--max-queue-wait-s", "-0.5"], "--max-queue-wait-s must be at least 0"),
        ([*ROUTER, "--max-in-flight-per-worker", "-3"], "--max-in-flight-per-worker must be at least 0"),
        ([*ROUTER, "--liveness-timeout-s", "0"], "--liveness-timeout-s must be more than 0"),
        ([*ROUTER, "--hedge-after-s", "0"], "--hedge-after-s must be more than 0"),
    ],
)
def test_bad_admission_flags_exit_2_naming_the_flag(argv, named, capsys):
    assert main(argv) == 2
    assert named in capsys.readouterr().err


def test_router_has_no_queue_wait_flag():
    """Queue waits are the workers' (their batchers know their queues); a router has no such bound."""
    with pytest.raises(SystemExit) as info:
        main([*ROUTER, "--max-queue-wait-s", "1"])
    assert info.value.code == 2


def test_settings_come_from_the_environment_too(monkeypatch, capsys):
    monkeypatch.setenv("SHUNTER_WORKER_MAX_IN_FLIGHT", "-4")
    assert main(WORKER) == 2
    assert "$SHUNTER_WORKER_MAX_IN_FLIGHT must be at least 0, got -4" in capsys.readouterr().err


def test_a_bad_environment_value_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("SHUNTER_ROUTER_MAX_IN_FLIGHT_PER_WORKER", "lots")
    assert main(ROUTER) == 2
    assert "$SHUNTER_ROUTER_MAX_IN_FLIGHT_PER_WORKER: 'lots' is not an integer" in capsys.readouterr().err
