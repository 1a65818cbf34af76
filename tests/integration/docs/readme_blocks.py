"""Run the README's shell and Python blocks as a user pastes them, from the repository root.

A scenario is README blocks in the order a user runs them, in one bash session (they share
variables such as ``$RUN`` and the exports). The text is the README's, with three changes
a user makes without thinking: the fixed ports (8001, 50051, 6380...) become free ones; a
command the README runs in the foreground for good (``shunter up``, a worker) goes to the
background until its readiness line appears, as "from another shell" means; and a Python
block runs through ``.venv/bin/python -`` in that shell, so it sees the exports.

The session runs without the virtualenv on PATH (the README must say ``.venv/bin/...``),
with HOME and TMPDIR in a temporary directory, and an ERR trap that reports every command
that failed, so a test compares them with the failures the README announces. Everything
it started, daemons included, carries a marker in its environment and is stopped after.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from services.common.ready_line import free_port
from tests.support.processes import ROOT, redis_server_binary

README = ROOT / "README.md"
#: The ports the README uses; a scenario gets a free port for each.
README_PORTS = (8001, 8002, 8101, 8102, 8103, 50051, 6380)
MARKER_ENV = "SHUNTER_README_RUN"
_BLOCK = re.compile(r"^(#{2,3} [^\n]*)$|^```(\w*)\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    section: str  # the heading above it, without the #s
    index: int  # among the section's runnable blocks
    lang: str  # bash or python
    text: str

    @property
    def name(self) -> str:
        return f"{self.section} #{self.index}"


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every ```bash / ```sh / ```python block with its section."""
    found: list[Block] = []
    section = ""
    counts: dict[str, int] = {}
    for match in _BLOCK.finditer(README.read_text() if text is None else text):
        if match.group(1):
            section = match.group(1).lstrip("#").strip()
            continue
        lang = {"sh": "bash"}.get(match.group(2), match.group(2))
        if lang not in ("bash", "python"):
            continue
        index = counts.get(section, 0)
        counts[section] = index + 1
        found.append(Block(section, index, lang, match.group(3)))
    return found


def block(section: str, index: int = 0) -> Block:
    """The README block ``index`` of the section whose heading starts with ``section``."""
    matches = [b for b in readme_blocks() if b.section.startswith(section) and b.index == index]
    if len(matches) != 1:
        raise LookupError(f"README has {len(matches)} blocks #{index} in a section starting {section!r}")
    return matches[0]


@dataclass(frozen=True)
class Step:
    """One README block in a scenario; ``foreground``: a regex of the readiness line it prints."""

    block: Block
    foreground: str = ""
    #: Seconds the foreground command may take to print it.
    ready_timeout_s: float = 240.0
    #: Bash run after the block (e.g. ``source`` the env file `shunter up` wrote, as its output says).
    then: str = ""


PRELUDE = r"""
set -o pipefail
trap 'rc=$?; echo "README-FAILED ($rc): $BASH_COMMAND" >&2' ERR
readme_wait() {  # LOG PATTERN PID TIMEOUT: a foreground command's readiness line, or why not
  local deadline=$((SECONDS + $4))
  until grep -Eq "$2" "$1"; do
    if ! kill -0 "$3" 2>/dev/null; then echo "README-EXITED: $1"; tail -n 30 "$1"; return 1; fi
    if [ $SECONDS -ge $deadline ]; then echo "README-TIMEOUT: $1"; tail -n 30 "$1"; return 1; fi
    sleep 0.2
  done
}
"""


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """The commands that failed, as bash printed them, background ones that exited non-zero included."""
        return (re.findall(r"^README-FAILED \(\d+\): (.*)$", self.stderr, re.M)
                + re.findall(r"^README-JOB-EXITED:(.*)$", self.stderr, re.M))


def script(steps: list[Step], ports: dict[int, int], out: Path) -> str:
    parts = [PRELUDE]
    for n, step in enumerate(steps):
        text = step.block.text
        for port, free in ports.items():
            text = re.sub(rf"(?<![\d.]){port}(?!\d)", str(free), text)
        parts.append(f"echo 'README-BLOCK: {step.block.name}' >&2")
        if step.block.lang == "python":
            parts.append(f".venv/bin/python - <<'README_PY'\n{text}README_PY")
        elif step.foreground:
            log = out / f"foreground-{n}.log"
            command = text.strip()
            parts.append(f"{{ {command}\n}} > {log} 2>&1 &")
            parts.append(f"readme_wait {log} '{step.foreground}' $! {step.ready_timeout_s:.0f}")
        else:
            parts.append(text)
        if step.then:
            parts.append(step.then.replace("{log}", str(out / f"foreground-{n}.log")))
    # Background commands (`... &`) that died meanwhile: their failure trips no ERR trap.
    parts.append("jobs -l | sed -n 's/^\\[[0-9]*\\][-+ ]*[0-9]* *Exit [0-9]*/README-JOB-EXITED:&/p' >&2")
    return "\n".join(parts) + "\n"


def user_env(home: Path) -> dict[str, str]:
    """A user's shell in the repository root: no virtualenv on PATH, a HOME and TMPDIR of its own."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p.rstrip("/") != venv_bin]
    redis_dir = str(Path(redis_server_binary()).parent)
    if redis_dir != venv_bin and redis_dir not in path:
        path.append(redis_dir)  # the README expects redis-server installed
    env = {k: v for k, v in os.environ.items()
           if k != "VIRTUAL_ENV" and not k.startswith(("SHUNTER_", "PYTEST_", "OTEL_"))}
    env.update(PATH=os.pathsep.join(path), HOME=str(home), TMPDIR=str(home), PYTHONUNBUFFERED="1")
    return env


def run_scenario(steps: list[Step], tmp: Path, *, timeout_s: float = 600.0) -> Outcome:
    """Run the steps in one bash session; stop everything it started, daemons included."""
    home = tmp / "home"
    home.mkdir()
    out = tmp / "out"
    out.mkdir()
    ports = {port: free_port() for port in README_PORTS}
    marker = uuid.uuid4().hex
    env = {**user_env(home), MARKER_ENV: marker}
    text = script(steps, ports, out)
    (tmp / "scenario.sh").write_text(text)
    try:
        done = subprocess.run(["bash", "--noprofile", "--norc"], input=text, cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout_s, start_new_session=True)
    finally:
        stop_marked(marker)
    logs = {p.name: p.read_text(errors="replace") for p in sorted(out.glob("*.log"))}
    return Outcome(done.returncode, done.stdout, done.stderr, logs)


def _marked(marker: str) -> list[int]:
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
    return pids


def stop_marked(marker: str, grace_s: float = 30.0) -> None:
    """SIGTERM every process carrying the marker (redis-server --daemonize too), then SIGKILL."""
    for pid in _marked(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(_marked(marker)):
        time.sleep(0.2)
    for pid in _marked(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pids: list[int]) -> bool:
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
    return False
