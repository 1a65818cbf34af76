"""Network-partition tests: registry, Redis, two workers and a router, each in a network
namespace of its own (tests/support/netns.py). They take a few minutes, so they run from
scripts/reliability (which sets SHUNTER_NETNS=1), not in scripts/test; they skip, saying
why, where namespaces cannot be made."""

from __future__ import annotations

import os

import pytest

from tests.support.netns import unavailable_reason


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    mine = [item for item in items if str(item.fspath).startswith(here)]
    if not mine:
        return
    if os.environ.get("SHUNTER_NETNS") != "1":
        reason = "network-partition tests run from scripts/reliability (set SHUNTER_NETNS=1 to run them here)"
    else:
        reason = unavailable_reason()
    for item in mine:
        item.add_marker(pytest.mark.netns)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
