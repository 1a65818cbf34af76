"""Fault-suite scenarios (overload at 10x, a SIGSTOPped worker, a slow worker beside a fast
one): real clusters under load for tens of seconds each, so they run from scripts/reliability
(which sets SHUNTER_RELIABILITY=1), never in scripts/test. Each writes its figures into
RELIABILITY.md (tests/reliability/report.py) and fails when its bar is not met."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    mine = [item for item in items if str(item.fspath).startswith(here)]
    for item in mine:
        item.add_marker(pytest.mark.slow)
        if os.environ.get("SHUNTER_RELIABILITY") != "1":
            item.add_marker(pytest.mark.skip(reason="fault-suite scenarios run from scripts/reliability "
                                                    "(set SHUNTER_RELIABILITY=1 to run them here)"))
