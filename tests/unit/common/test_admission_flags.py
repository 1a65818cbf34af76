"""The admission flags of `shunter worker` and `shunter router`: bad values exit 2 naming them."""

from __future__ import annotations

import pytest

from services.cli.main import main


@pytest.mark.parametrize(
    "argv, named",
    [
        (["worker", "--model-repository", "/nonexistent", "--max-in-flight", "-1"], "max_in_flight"),
        (["worker", "--model-repository", "/nonexistent", "--max-queue-wait-s", "-0.5"], "max_queue_wait_s"),
        (["router", "--registry", "127.0.0.1:1", "--admin-key", "k", "--max-in-flight-per-worker", "-3"],
         "max_in_flight_per_worker"),
        (["router", "--registry", "127.0.0.1:1", "--admin-key", "k", "--liveness-timeout-s", "0"],
         "liveness_timeout_s"),
    ],
)
def test_bad_admission_flags_exit_2_naming_the_setting(argv, named, capsys):
    assert main(argv) == 2
    assert named in capsys.readouterr().err


def test_router_has_no_queue_wait_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["router", "--registry", "127.0.0.1:1", "--admin-key", "k", "--max-queue-wait-s", "1"])
    assert info.value.code == 2


def test_settings_come_from_the_environment_too(monkeypatch, capsys):
    monkeypatch.setenv("SHUNTER_WORKER_MAX_IN_FLIGHT", "-4")
    assert main(["worker", "--model-repository", "/nonexistent"]) == 2
    assert "max_in_flight must be 0 (no bound) or more, got -4" in capsys.readouterr().err


def test_a_bad_environment_value_is_a_usage_error_of_that_command_only(monkeypatch):
    monkeypatch.setenv("SHUNTER_WORKER_MAX_IN_FLIGHT", "lots")
    with pytest.raises(SystemExit) as info:
        main(["worker", "--model-repository", "/nonexistent"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["router", "--help"])
    assert info.value.code == 0
