"""Every `shunter ...` command in the README's shell blocks parses with today's CLI.

A renamed or dropped flag makes the README fail as pasted; this catches it without
running the commands (what they do is covered by the tests of each command). Shell
variables and command substitutions are replaced by a placeholder value first.
"""

from __future__ import annotations

import re
import shlex

import pytest

from services.cli.main import build_parser
from tests.support.processes import ROOT

BLOCK = re.compile(r"```(?:bash|sh)\n(.*?)```", re.S)


def readme_commands() -> list[str]:
    commands = []
    for block in BLOCK.findall((ROOT / "README.md").read_text()):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith((".venv/bin/shunter ", "shunter ")):
                commands.append(line)
    return commands


def argv_of(line: str) -> list[str]:
    line = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)", "VALUE", line)  # $(...) substitutions
    line = re.sub(r"\$\{?\w+\}?", "VALUE", line)
    line = re.split(r"\s(?:>|2>|&>|\||&&|;|#)", line)[0].rstrip(" &")
    return shlex.split(line)[1:]


def test_the_readme_has_shunter_commands():
    assert len(readme_commands()) > 20


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line, capsys):
    try:
        build_parser().parse_args(argv_of(line))
    except SystemExit as exc:
        if exc.code == 0:  # --help
            return
        pytest.fail(f"{line!r} does not parse (exit {exc.code}): {capsys.readouterr().err.strip()}")
