"""A client for one Redis server surfaces an outage to its caller instead of retrying inside.

The router's local rate-limit fallback and `shunter stream`'s backoff depend on seeing the
first failure; redis-py's own default would retry connects for seconds first.
"""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common import redis_connect
from tests.support.processes import start_redis


async def test_a_killed_server_fails_the_next_call_without_hidden_retries():
    server = start_redis()
    client = redis_connect.connect(server.url, socket_connect_timeout=5, socket_timeout=5)
    try:
        assert await client.ping()
        assert client.get_retry() is None
        server.kill()
        with pytest.raises(RedisConnectionError):
            await client.ping()
        server.start()
        assert await client.ping()
    finally:
        await client.aclose()
        server.kill()
