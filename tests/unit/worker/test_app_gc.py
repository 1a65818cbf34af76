"""The worker freezes what start-up built out of the garbage collector (WorkerApp.start):
torch and the engines leave a large heap, and a full collection that scans it stalls the
event loop (and every refusal under overload) for tens of milliseconds."""

from __future__ import annotations

import gc

from services.worker.app import WorkerApp
from tests.support.models import build_examples


async def test_start_freezes_what_start_up_built():
    gc.unfreeze()
    app = WorkerApp(repository=build_examples(), only_models={"digits"})
    try:
        await app.start()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        await app.close()
