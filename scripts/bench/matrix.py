"""The benchmark matrix (matrix.yaml): loaded, one profile resolved, and every key checked.

The runner and the renderer read the same file, so a typo must stop both before any
server starts, naming the key: ``MatrixError("profiles.quick.runs: expected int, got 'x'")``.
A profile may ``extends`` another: mappings merge key by key, anything else replaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MATRIX = Path(__file__).resolve().with_name("matrix.yaml")


class MatrixError(ValueError):
    """The matrix is malformed; the message starts with the key's path."""


#: A mapping whose keys are any names, each value checked against the inner schema.
class AnyKey:
    def __init__(self, value: Any) -> None:
        self.value = value


POINT_LIST = [list]
CONFIG = {"batching": bool, "processes": int, "clients": int}
PROFILE: dict[str, Any] = {
    "extends": str,
    "runs": int,
    "duration_s": float,
    "warmup_s": float,
    "engine_seconds": float,
    "budget_s": float,
    "client_processes": int,
    "repository": str,
    "models": AnyKey(str),
    "engines": [str],
    "bars": str,
    "output": str,
    "plots_dir": str,
    "worker": {
        "configs": AnyKey(CONFIG),
        "concurrencies": [int],
        "overhead": {"config": str, "concurrency": int, "rows": (int, str)},
        "open_loop": {"config": str, "fractions": [float], "probes": int},
        "points": POINT_LIST,
    },
    "router": {
        "clusters": AnyKey(int),
        "points": [
            {
                "name": str,
                "cluster": str,
                "direct": bool,
                "stream": bool,
                "relay": bool,
                "model": str,
                "concurrencies": [int],
            }
        ],
        "cache": {"cluster": str, "model": str, "concurrency": int},
    },
    "peers": {
        "systems": AnyKey({"label": str, "kind": str, "workers": int, "instances": int, "parallel_workers": int}),
        "loads": AnyKey([int]),
    },
}
REQUIRED = ("runs", "duration_s", "warmup_s", "engine_seconds", "repository", "models", "bars", "output", "plots_dir")
PEER = {"packages": [str], "check": str, "versions": [str]}
SYSTEM_KINDS = ("worker", "cluster", "triton", "mlserver")
#: Bar kind -> the keys it needs (render.py judges each kind).
BAR_KINDS: dict[str, tuple[str, ...]] = {
    "vs_best": ("ours", "theirs", "metric"),
    "value": ("points",),
    "diff": ("points", "metric"),
    "tail": ("point",),
    "limit": ("point",),
    "capture": ("point", "base"),
    "ratio_best": ("points", "base"),
    "engine_gain": ("model",),
    "batch": ("point", "min"),
    "cpu_ratio": ("point", "cpu", "per", "max"),
}
BAR: dict[str, Any] = {
    "kind": str,
    "name": str,
    "target": str,
    "info": str,
    "ours": [str],
    "theirs": [str],
    "points": [str],
    "base": (str, list),
    "point": str,
    "model": str,
    "metric": str,
    "cpu": str,
    "per": str,
    "unit": str,
    "note": str,
    "digits": int,
    "min": float,
    "max": float,
    "ahead": bool,
    "p99": bool,
    "also": {"label": str, "point": str, "cpu": str},
}


def check(value: Any, schema: Any, path: str) -> None:
    """Raise MatrixError naming ``path`` where ``value`` does not fit ``schema``."""
    if isinstance(schema, AnyKey):
        if not isinstance(value, dict):
            raise MatrixError(f"{path}: expected a mapping, got {value!r}")
        for key, item in value.items():
            if not isinstance(key, str):  # YAML reads a bare on/off/yes/no as a boolean
                raise MatrixError(f'{path}.{key}: a name must be a string (quote it: "{key}")')
            check(item, schema.value, f"{path}.{key}")
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            raise MatrixError(f"{path}: expected a mapping, got {value!r}")
        for key, item in value.items():
            if key not in schema:
                raise MatrixError(f"{path}.{key}: unknown key (known: {', '.join(schema)})")
            check(item, schema[key], f"{path}.{key}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise MatrixError(f"{path}: expected a list, got {value!r}")
        for index, item in enumerate(value):
            check(item, schema[0], f"{path}[{index}]")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if float in types:
            types = (*types, int)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types if t is not int or float not in types)
            raise MatrixError(f"{path}: expected {names}, got {value!r}")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve(matrix: dict[str, Any], name: str) -> dict[str, Any]:
    """Profile ``name`` with its ``extends`` chain merged in, checked against the rest of the matrix."""
    profiles = matrix["profiles"]
    if name not in profiles:
        raise MatrixError(f"profiles.{name}: no such profile (known: {', '.join(profiles)})")
    chain, seen = [profiles[name]], {name}
    while "extends" in chain[-1]:
        parent = chain[-1]["extends"]
        if parent not in profiles or parent in seen:
            raise MatrixError(f"profiles.{name}.extends: {parent!r} is not another profile")
        seen.add(parent)
        chain.append(profiles[parent])
    profile: dict[str, Any] = {}
    for part in reversed(chain):
        profile = merge(profile, part)
    profile.pop("extends", None)
    path = f"profiles.{name}"
    for key in REQUIRED:
        if key not in profile:
            raise MatrixError(f"{path}.{key}: missing")
    if profile["bars"] not in matrix["bars"]:
        raise MatrixError(f"{path}.bars: {profile['bars']!r} is not a list under bars")
    for index, engine in enumerate(profile.get("engines", [])):
        if engine.split("/")[0] not in profile["models"] or "/" not in engine:
            raise MatrixError(f"{path}.engines[{index}]: {engine!r} is not MODEL/VERSION of a profile model")
    worker = profile.get("worker", {})
    configs = worker.get("configs", {})
    for index, point in enumerate(worker.get("points", [])):
        where = f"{path}.worker.points[{index}]"
        if len(point) != 4 or not all(isinstance(x, int) for x in point[2:]):
            raise MatrixError(f"{where}: expected [model, config, concurrency, rows], got {point!r}")
        if point[0] not in profile["models"]:
            raise MatrixError(f"{where}: model {point[0]!r} is not in {path}.models")
        if point[1] not in configs:
            raise MatrixError(f"{where}: config {point[1]!r} is not in {path}.worker.configs")
    for key in ("overhead", "open_loop"):
        if key in worker and worker[key]["config"] not in configs:
            raise MatrixError(f"{path}.worker.{key}.config: {worker[key]['config']!r} is not a config")
    router = profile.get("router", {})
    for index, point in enumerate(router.get("points", [])):
        if point["cluster"] not in router.get("clusters", {}):
            raise MatrixError(f"{path}.router.points[{index}].cluster: {point['cluster']!r} is not a cluster")
    for key, system in profile.get("peers", {}).get("systems", {}).items():
        if system.get("kind") not in SYSTEM_KINDS:
            raise MatrixError(f"{path}.peers.systems.{key}.kind: expected one of {', '.join(SYSTEM_KINDS)}")
        if system["kind"] in ("triton", "mlserver") and system["kind"] not in matrix["peers"]:
            raise MatrixError(f"{path}.peers.systems.{key}.kind: no peers.{system['kind']} to install it")
    return profile


def validate(matrix: Any) -> dict[str, Any]:
    if not isinstance(matrix, dict):
        raise MatrixError(f"(top): expected a mapping, got {matrix!r}")
    check(matrix, {"profiles": AnyKey(PROFILE), "peers": AnyKey(PEER), "bars": AnyKey([BAR])}, "(top)")
    for key in ("profiles", "peers", "bars"):
        if key not in matrix:
            raise MatrixError(f"{key}: missing")
    for family, bars in matrix["bars"].items():
        for index, bar in enumerate(bars):
            where = f"bars.{family}[{index}]"
            for key in ("kind", "name"):
                if key not in bar:
                    raise MatrixError(f"{where}.{key}: missing")
            if bar["kind"] not in BAR_KINDS:
                raise MatrixError(f"{where}.kind: {bar['kind']!r} is not one of {', '.join(BAR_KINDS)}")
            for key in BAR_KINDS[bar["kind"]]:
                if key not in bar:
                    raise MatrixError(f"{where}.{key}: missing (a {bar['kind']} bar needs it)")
            if "info" not in bar and "min" not in bar and "max" not in bar and not bar.get("ahead"):
                raise MatrixError(f"{where}: a bar needs min, max or ahead (or info, for an information row)")
    for name in matrix["profiles"]:
        resolve(matrix, name)
    return matrix


def load(path: Path = MATRIX, profile: str | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the whole matrix, the resolved ``profile`` or None); MatrixError if anything is off."""
    try:
        matrix = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MatrixError(f"(file) {path}: {exc}") from exc
    validate(matrix)
    return matrix, (resolve(matrix, profile) if profile else None)
