"""--redis-wait-replicas on a Redis that cannot satisfy it: writes are answered UNAVAILABLE
saying why; reads go on; bad values are usage errors."""

from __future__ import annotations

import pytest

from services.common.errors import Unavailable
from services.common.registry_client import RegistryClient
from tests.integration.registry.conftest import start_registry


async def test_a_write_no_replica_confirms_is_unavailable_naming_the_shortfall(redis_server, admin):
    registry = start_registry(redis_server, admin, "--redis-wait-replicas", "1", "--redis-wait-timeout-ms", "50")
    try:
        async with RegistryClient(registry.address, admin.key) as client:
            with pytest.raises(Unavailable, match=r"only 0 of 1 replica\(s\) confirmed it within 50 ms"):
                await client.create_api_key("w")
            # Applied on the primary all the same (WAIT does not undo it): reads show it.
            assert "w" in {k.tenant for k in await client.list_api_keys()}
    finally:
        registry.terminate()


@pytest.mark.parametrize("flag", [("--redis-wait-replicas", "-1"), ("--redis-wait-timeout-ms", "0"),
                                  ("--redis-wait-replicas", "two")])
def test_bad_wait_values_are_usage_errors(redis_server, admin, flag):
    with pytest.raises(RuntimeError, match="exited with 2"):
        start_registry(redis_server, admin, *flag)
