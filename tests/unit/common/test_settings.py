"""Settings from one source: a dataclass field is a flag, an environment variable, a default and a bound."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common import settings as source
from services.common.settings import SettingsError, check_bounds, setting
from services.registry.settings import RegistrySettings
from services.router.settings import RouterSettings
from services.worker.settings import WorkerSettings


@dataclass(frozen=True)
class Demo:
    timeout_s: float = setting(2.5, "how long", unit="s", minimum=0, exclusive_minimum=True)
    count: int = setting(3, "how many", minimum=1, maximum=10)
    mode: str = setting("a", "which", choices=("a", "b"))
    token: str = setting("", "secret", secret=True, env_aliases=("OLD_TOKEN",))
    names: tuple[str, ...] = setting((), "names")
    roots: tuple[Path, ...] = setting((), "roots", flag="--root")
    verbose: bool = setting(False, "chatty")
    where: Path | None = setting(None, "a file")
    internal: int = 7

    def __post_init__(self) -> None:
        check_bounds(self)


def parse(argv: list[str], env: dict[str, str] | None = None) -> Demo:
    parser = argparse.ArgumentParser(prog="demo", exit_on_error=False)
    source.add_arguments(parser, Demo, "demo")
    return source.from_args(Demo, parser.parse_args(argv), "demo", environ=env or {})


def test_defaults_come_from_the_dataclass():
    assert parse([]) == Demo()


def test_flag_beats_environment_beats_alias_beats_default():
    env = {"SHUNTER_DEMO_COUNT": "5", "SHUNTER_DEMO_TOKEN": "new", "OLD_TOKEN": "old"}
    assert parse([], env).count == 5
    assert parse(["--count", "4"], env).count == 4
    assert parse([], env).token == "new"
    assert parse([], {"OLD_TOKEN": "old"}).token == "old"


def test_every_kind_parses_from_flags_and_environment():
    got = parse(["--names", "a,b", "--names", "c", "--root", "/x", "--root", "/y", "--verbose", "--where", "/f"])
    assert got.names == ("a", "b", "c")
    assert got.roots == (Path("/x"), Path("/y"))
    assert got.verbose is True and got.where == Path("/f")
    env = {"SHUNTER_DEMO_NAMES": "a, b", "SHUNTER_DEMO_ROOTS": "/x:/y", "SHUNTER_DEMO_VERBOSE": "yes",
           "SHUNTER_DEMO_TIMEOUT_S": "0.5", "SHUNTER_DEMO_MODE": "b"}
    got = parse([], env)
    assert got.names == ("a", "b") and got.roots == (Path("/x"), Path("/y"))
    assert got.verbose is True and got.timeout_s == 0.5 and got.mode == "b"
    assert parse(["--no-verbose"], env).verbose is False


def test_a_secret_can_come_from_a_file(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    assert parse(["--token-file", str(key)]).token == "s3cret"
    with pytest.raises(SettingsError, match=r"--token-file .*cannot read"):
        parse(["--token-file", str(tmp_path / "missing")])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SHUNTER_DEMO_COUNT": "many"}, r"\$SHUNTER_DEMO_COUNT: 'many' is not an integer"),
        ({"SHUNTER_DEMO_TIMEOUT_S": "nan"}, r"\$SHUNTER_DEMO_TIMEOUT_S: 'nan' is not a number"),
        ({"SHUNTER_DEMO_VERBOSE": "maybe"}, r"\$SHUNTER_DEMO_VERBOSE: 'maybe' is not true or false"),
        ({"SHUNTER_DEMO_MODE": "c"}, r"\$SHUNTER_DEMO_MODE must be one of a, b, got 'c'"),
        ({"SHUNTER_DEMO_COUNT": "11"}, r"\$SHUNTER_DEMO_COUNT must be at most 10, got 11"),
        ({"SHUNTER_DEMO_TIMEOUT_S": "0"}, r"\$SHUNTER_DEMO_TIMEOUT_S must be more than 0, got 0.0"),
    ],
)
def test_bad_environment_values_are_named(env, message):
    with pytest.raises(SettingsError, match=message):
        parse([], env)


def test_bad_flag_values_are_argparse_errors():
    with pytest.raises(argparse.ArgumentError, match="'x' is not an integer"):
        parse(["--count", "x"])


def test_bounds_hold_for_settings_built_in_code():
    with pytest.raises(SettingsError, match="--count must be at least 1"):
        Demo(count=0)


def test_help_lists_unit_default_and_variables():
    parser = argparse.ArgumentParser(prog="demo")
    source.add_arguments(parser, Demo, "demo")
    text = parser.format_help()
    assert "how long (s; default 2.5; env SHUNTER_DEMO_TIMEOUT_S)" in " ".join(text.split())
    assert "env SHUNTER_DEMO_TOKEN, OLD_TOKEN" in " ".join(text.split())
    assert "--internal" not in text


@pytest.mark.parametrize(
    ("cls", "service", "derived"),
    [
        (RouterSettings, "router", {"max_message_bytes", "client_tls"}),  # from the server and TLS flags
        (WorkerSettings, "worker", set()),
        (RegistrySettings, "registry", set()),
    ],
)
def test_every_service_setting_has_a_flag_and_a_variable(cls, service, derived):
    specs = source.specs(cls)
    assert {spec.name for spec in specs} == {f.name for f in dataclasses.fields(cls)} - derived
    names = source.environment_names(cls, service)
    assert all(f"SHUNTER_{service.upper()}_{spec.name.upper()}" in names for spec in specs)
