"""Settings from one source: each service's settings dataclass makes its flags and env vars.

A field declared with :func:`setting` carries its help text, unit and bounds. From it
:func:`add_arguments` adds ``--field-name`` to a command's parser and
:func:`from_args` builds the dataclass from the parsed flags, then from
``SHUNTER_<SERVICE>_<FIELD_NAME>``, then from the field's documented older variables
(``SHUNTER_REDIS_URL``…), then from the field's default — so the default, the bounds and
the parsing of every setting are written once. A secret (a key) also gets
``--field-name-file``, so it need not appear on a command line that ``ps`` shows.

Errors in a flag are argparse's (exit 2, on stderr); errors in an environment variable or a
value out of bounds raise :class:`SettingsError` naming the flag or variable, which the
command prints to stderr before exiting with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_META = "shunter_setting"


class SettingsError(ValueError):
    """A setting's value is malformed or out of bounds; the message names where it came from."""


@dataclass(frozen=True, slots=True)
class Setting:
    help: str
    #: Shown in --help after the value: "s", "MiB", "bytes"…
    unit: str = ""
    #: Flag name when it is not the field's name (kept for flags older than this module).
    flag: str | None = None
    #: Older environment variables still honoured, after the generated one.
    env_aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    #: Inclusive lower bound, and whether the bound itself is excluded (``> minimum``).
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    #: A secret: never printed as a default, and also readable from ``--<flag>-file``.
    secret: bool = False
    #: The secret's file flag when it is not ``--<flag>-file``.
    file_flag: str | None = None
    #: Not listed in --help (internal knobs tests turn).
    hidden: bool = False
    metavar: str | None = None


def setting(default: Any = dataclasses.MISSING, help: str = "", **options: Any) -> Any:
    """A dataclass field that is also a flag and an environment variable (see the module doc)."""
    meta = {_META: Setting(help=help, **options)}
    if isinstance(default, list | dict | set):
        raise TypeError("setting defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    kind: str  # "str" "int" "float" "bool" "path" "paths" "strs"
    optional: bool
    default: Any
    meta: Setting

    @property
    def flag(self) -> str:
        return self.meta.flag or "--" + self.name.replace("_", "-")

    def env(self, service: str) -> str:
        return f"SHUNTER_{service.upper()}_{self.name.upper()}"


def _kind(annotation: Any) -> tuple[str, bool]:
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        (annotation,) = [a for a in args if a is not type(None)]
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        inner = args[0]
        return ("paths" if inner is Path else "strs"), optional
    simple = {str: "str", int: "int", float: "float", bool: "bool", Path: "path"}
    if annotation not in simple:
        raise TypeError(f"unsupported setting type {annotation!r}")
    return simple[annotation], optional


def specs(cls: type) -> list[_Spec]:
    # Only the settings' own annotations are resolved: other fields (a TLS config object)
    # may name types their module imports for type checking only.
    namespace = vars(sys.modules[cls.__module__])
    found = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        annotation = eval(f.type, namespace) if isinstance(f.type, str) else f.type
        kind, optional = _kind(annotation)
        found.append(_Spec(f.name, kind, optional, f.default, meta))
    return found


def _convert(spec: _Spec, text: str, source: str) -> Any:
    """One value from its text form; ``source`` (a flag or variable) goes into the error."""
    try:
        if spec.kind == "int":
            return int(text)
        if spec.kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if spec.kind == "bool":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if spec.kind == "path":
            return Path(text).expanduser()
        if spec.kind == "paths":
            return tuple(Path(p).expanduser() for p in text.split(os.pathsep) if p)
        if spec.kind == "strs":
            return tuple(p.strip() for p in text.split(",") if p.strip())
        return text
    except ValueError:
        want = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(spec.kind, "a value")
        raise SettingsError(f"{source}: {text!r} is not {want}") from None


def _describe_default(spec: _Spec, default: Any) -> str:
    if spec.meta.secret or default in ("", None, ()):
        return ""
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    service: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    exclude: Iterable[str] = (),
    help_prefix: str = "",
) -> None:
    """Add one flag per setting of ``cls`` (plus ``--X-file`` for secrets) to ``parser``.

    Flags default to None, so :func:`from_args` can tell "not given" from a value and look
    further (environment, default). ``defaults`` overrides a field's default for this
    command (each service has its own port).
    """
    skipped = set(exclude)
    for spec in specs(cls):
        if spec.name in skipped:
            continue
        meta = spec.meta
        default = (defaults or {}).get(spec.name, spec.default)
        parts = [meta.help]
        tail = []
        if meta.unit:
            tail.append(meta.unit)
        shown = _describe_default(spec, default)
        if shown:
            tail.append(f"default {shown}")
        tail.append("env " + ", ".join((spec.env(service), *meta.env_aliases)))
        text = help_prefix + " ".join(parts) + f" ({'; '.join(tail)})"
        kwargs: dict[str, Any] = {
            "dest": spec.name,
            "default": None,
            "help": argparse.SUPPRESS if meta.hidden else text.replace("%", "%%"),
        }
        if spec.kind != "bool" and not meta.choices:
            kwargs["metavar"] = meta.metavar or _metavar(spec)
        if spec.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.kind == "paths":
            kwargs["action"] = "append"
            kwargs["type"] = lambda text: Path(text).expanduser()
        elif spec.kind == "strs":
            # --serve a,b --serve c: comma-separated, and repeatable.
            kwargs["action"] = "extend"
            kwargs["type"] = lambda text: [p.strip() for p in text.split(",") if p.strip()]
        else:
            kwargs["type"] = _flag_type(spec)
            if meta.choices:
                kwargs["choices"] = meta.choices
        parser.add_argument(spec.flag, **kwargs)
        if meta.secret:
            parser.add_argument(
                meta.file_flag or spec.flag + "-file",
                dest=f"{spec.name}_file",
                type=Path,
                default=None,
                metavar="FILE",
                help=argparse.SUPPRESS if meta.hidden else f"read {spec.flag} from this file (`ps` shows no secret)",
            )


def _metavar(spec: _Spec) -> str:
    if spec.meta.secret:
        return "KEY"
    by_unit = {"s": "SECONDS", "MiB": "MIB", "bytes": "BYTES"}
    if spec.meta.unit in by_unit:
        return by_unit[spec.meta.unit]
    return {"int": "N", "float": "NUMBER", "path": "PATH", "paths": "PATH", "strs": "NAMES"}.get(spec.kind, "TEXT")


def _flag_type(spec: _Spec) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return _convert(spec, text, spec.flag)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None

    convert.__name__ = spec.kind  # argparse names the type in its message
    return convert


def _from_environment(spec: _Spec, service: str, environ: Mapping[str, str]) -> tuple[bool, Any]:
    for name in (spec.env(service), *spec.meta.env_aliases):
        text = environ.get(name)
        if text is not None and (text != "" or spec.kind == "str"):
            value = _convert(spec, text, f"${name}")
            _check_value(spec, value, f"${name}")
            return True, value
    return False, None


def _read_secret(path: Path, flag: str) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{flag} {path}: cannot read: {exc.strerror}") from None
    if not text:
        raise SettingsError(f"{flag} {path} is empty")
    return text


def values(
    cls: type,
    args: argparse.Namespace,
    service: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Each setting's value: flag, then ``--X-file``, then environment, then default."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for spec in specs(cls):
        if not hasattr(args, spec.name):
            continue  # excluded from this command
        given = getattr(args, spec.name)
        if given is not None:
            out[spec.name] = tuple(given) if isinstance(given, list) else given
            continue
        secret_file = getattr(args, f"{spec.name}_file", None)
        if secret_file is not None:
            out[spec.name] = _read_secret(secret_file, spec.meta.file_flag or spec.flag + "-file")
            continue
        found, value = _from_environment(spec, service, env)
        if found:
            out[spec.name] = value
        elif defaults and spec.name in defaults:
            out[spec.name] = defaults[spec.name]
    return out


def from_args(
    cls: type,
    args: argparse.Namespace,
    service: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **fixed: Any,
):
    """Build ``cls`` from the command line and the environment; SettingsError if invalid."""
    resolved = values(cls, args, service, defaults=defaults, environ=environ)
    resolved.update(fixed)
    try:
        return cls(**resolved)
    except SettingsError:
        raise
    except (ValueError, TypeError) as exc:
        raise SettingsError(str(exc)) from None


def check_bounds(instance: Any) -> None:
    """Validate every setting of a dataclass against its declared choices and bounds.

    Called from ``__post_init__``, so a settings object built in code is checked the same
    way as one built from flags. Messages name the flag, which is what users type.
    """
    for spec in specs(type(instance)):
        _check_value(spec, getattr(instance, spec.name), spec.flag)


def _check_value(spec: _Spec, value: Any, source: str) -> None:
    meta = spec.meta
    if value is None:
        return
    if meta.choices and value not in meta.choices:
        raise SettingsError(f"{source} must be one of {', '.join(meta.choices)}, got {value!r}")
    if spec.kind in ("int", "float"):
        if meta.minimum is not None:
            if meta.exclusive_minimum and not value > meta.minimum:
                raise SettingsError(f"{source} must be more than {meta.minimum:g}, got {value}")
            if not meta.exclusive_minimum and value < meta.minimum:
                raise SettingsError(f"{source} must be at least {meta.minimum:g}, got {value}")
        if meta.maximum is not None and value > meta.maximum:
            raise SettingsError(f"{source} must be at most {meta.maximum:g}, got {value}")


def environment_names(cls: type, service: str) -> list[str]:
    """Every variable a service reads for ``cls`` (for docs and tests)."""
    return [name for spec in specs(cls) for name in (spec.env(service), *spec.meta.env_aliases)]
