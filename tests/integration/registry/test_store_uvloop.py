"""The registry's Redis store on uvloop, against a Redis that resets each connection as it
accepts it (a Redis going away mid-connect).

uvloop raises RuntimeError (not an OSError) for a write on a transport the peer reset
between connect and redis-py's first command, and redis-py passes it through; the router's
Redis link counted it as an outage, the registry's store let it escape as INTERNAL. Now
every read and write refuses with UNAVAILABLE (reads from the last snapshot when there is
one), as for any other outage.
"""

from __future__ import annotations

import uvloop

from services.common.errors import Unavailable
from services.registry.store import RedisStore
from tests.integration.router.test_limiter_redis import reset_on_accept_server


def test_a_connection_reset_mid_connect_is_an_outage_not_an_internal_error():
    server, port = reset_on_accept_server()

    async def main() -> tuple[int, list[str]]:
        refused, escaped = 0, []
        for _ in range(100):
            store = RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.5)
            try:
                # Not store.start(): its follow task's close can hang on such a Redis (left
                # for its own issue); these are the calls the registry's RPCs make.
                for call in (store.current(), store.run_script("LOOKUP_KEY", "0" * 64)):
                    try:
                        await call
                    except Unavailable:
                        refused += 1
            except Exception as exc:
                escaped.append(f"{type(exc).__name__}: {exc}")
            finally:
                await store.close()
            assert store.redis_up is False
        return refused, escaped

    try:
        refused, escaped = uvloop.run(main())
    finally:
        server.close()
    assert not escaped, f"{len(escaped)} of 100 rounds raised, e.g. {escaped[0]}"
    assert refused == 200
