"""RELIABILITY.md: one section per scenario, replaced in place each time the scenario runs.

Every figure in a section comes from the run that wrote it; the header says when and on
what machine load, since the suite often runs on a shared, busy machine.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence

from tests.support.processes import ROOT

PATH = ROOT / "RELIABILITY.md"
HEADER = """# Reliability: the fault suite's figures

Written by `scripts/reliability` (tests/reliability); each scenario replaces its own section
when it runs, so sections may come from different runs (each says when). Bars are the
issue's (#11); a scenario fails when its bar is not met.
"""


def record(scenario: str, title: str, rows: Sequence[tuple[str, str]], bars: Mapping[str, bool],
           notes: str = "") -> None:
    """Write (or replace) ``scenario``'s section: a table of figures and its bars, pass or fail."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdict = "PASS" if all(bars.values()) else "FAIL"
    lines = [f"<!-- scenario:{scenario} -->", f"## {title}: {verdict}", "", f"Run {stamp}.", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "| bar | result |", "|---|---|"]
    lines += [f"| {bar} | {'pass' if ok else 'FAIL'} |" for bar, ok in bars.items()]
    if notes:
        lines += ["", notes.strip()]
    lines += [f"<!-- /scenario:{scenario} -->", ""]
    section = "\n".join(lines)
    text = PATH.read_text() if PATH.exists() else HEADER
    pattern = re.compile(rf"<!-- scenario:{re.escape(scenario)} -->.*?<!-- /scenario:{re.escape(scenario)} -->\n?",
                         re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    PATH.write_text(text)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
