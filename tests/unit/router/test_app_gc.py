"""The router freezes what start-up built out of the garbage collector (RouterApp.start):
a full collection then scans only what requests allocate, instead of stalling the event
loop for tens of milliseconds under load."""

from __future__ import annotations

import asyncio
import gc

from services.router.app import RouterApp
from services.router.settings import RouterSettings

from .tables import table, worker


async def test_start_freezes_what_start_up_built():
    gc.unfreeze()

    async def source(on_state):
        yield table([worker("w1:1", [("digits", "1")])])
        await asyncio.Event().wait()

    app = RouterApp(RouterSettings(initial_table_timeout_s=5), table_source=source)
    try:
        await app.start()
        assert app.router.ready
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        await app.close()
