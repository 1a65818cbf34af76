"""What the report ran on: machine, load, versions, commit.

Numbers from a benchmark mean little without the box they came from: two cores shared
with other work give different figures from two quiet cores, so the report records the
load average before and after, and flags a busy start.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

#: Packages of Shunter's own environment whose versions the report shows.
OUR_PACKAGES = ("grpcio", "protobuf", "numpy", "onnxruntime", "torch", "uvloop", "tokenizers")
#: A 1-minute load average above this at the start means other work shares the cores.
BUSY_LOAD = 0.5


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "modified_files": len(changed.splitlines())}


def package_versions(names: tuple[str, ...] = OUR_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def venv_versions(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Package versions inside another virtual environment (a peer's)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    try:
        done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, timeout=60, check=True)
        import json

        return json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return dict.fromkeys(names, "unknown")


def machine(root: Path) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": package_versions(),
        "git": git_state(root),
        "load_at_start": list(os.getloadavg()),
    }


def busy_warning(load: list[float]) -> str | None:
    if load and load[0] > BUSY_LOAD:
        return (
            f"the 1-minute load average was {load[0]:.2f} when the run started: other work shared the cores, "
            "so these figures understate what a quiet machine does"
        )
    return None
