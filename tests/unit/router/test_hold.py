"""The router's guards against a registry that lost data: held workers, refused tables."""

from __future__ import annotations

from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.router.app import lost_from
from services.router.hold import WorkerHold
from services.router.table import build_snapshot


def table(revision: int, workers: dict[str, list[tuple[str, str, bool]]], models=("m",), keys=("k1",)):
    out = rpb.RoutingTable(revision=revision)
    for name in models:
        model = out.models.add(name=name)
        model.versions.add(model=name, version="1", state=rpb.PRODUCTION)
        model.versions.add(model=name, version="2", state=rpb.STAGED)
        model.policy.model = name
        model.policy.weights["1"] = 100
    for address, statuses in workers.items():
        worker = out.workers.add(worker_id=address, address=address)
        for model_name, version, ready in statuses:
            worker.versions.add(model=model_name, version=version, ready=ready)
    for key_id in keys:
        out.keys.add(key_id=key_id, secret_sha256=key_id * 32)
    return build_snapshot(out)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_workers_that_vanish_all_at_once_are_held_until_the_table_has_some_again() -> None:
    clock = Clock()
    hold = WorkerHold(10.0, clock)
    before = table(1, {"a:1": [("m", "1", True)], "b:1": [("m", "1", True)]})
    empty = hold.apply(before, table(2, {}))
    assert empty.models["m"].versions["1"].workers == ("a:1", "b:1")
    assert empty.worker_addresses == {"a:1", "b:1"}
    assert hold.holding == 1
    clock.now += 5
    still = hold.apply(empty, table(3, {}))
    assert still.models["m"].versions["1"].workers == ("a:1", "b:1")
    back = hold.apply(still, table(4, {"a:1": [("m", "1", True)]}))
    assert back.models["m"].versions["1"].workers == ("a:1",)
    assert back.worker_addresses == {"a:1"} and hold.holding == 0


def test_held_workers_are_dropped_after_the_hold() -> None:
    clock = Clock()
    hold = WorkerHold(10.0, clock)
    held = hold.apply(table(1, {"a:1": [("m", "1", True)]}), table(2, {}))
    clock.now += 10
    dropped = hold.apply(held, table(3, {}))
    assert dropped.models["m"].versions["1"].workers == ()
    assert hold.apply(dropped, table(4, {})).models["m"].versions["1"].workers == ()


def test_a_worker_that_says_not_ready_is_believed_and_one_of_several_leaving_is_not_held() -> None:
    hold = WorkerHold(10.0, Clock())
    before = table(1, {"a:1": [("m", "1", True)], "b:1": [("m", "1", True)]})
    not_ready = hold.apply(before, table(2, {"a:1": [("m", "1", False)], "b:1": [("m", "1", False)]}))
    assert not_ready.models["m"].versions["1"].workers == ()
    one_left = hold.apply(before, table(2, {"a:1": [("m", "1", True)]}))
    assert one_left.models["m"].versions["1"].workers == ("a:1",)
    assert hold.holding == 0


def test_a_table_that_went_back_and_lost_models_or_keys_is_refused() -> None:
    current = table(50, {}, models=("m", "n"), keys=("k1", "k2"))
    assert lost_from(current, table(3, {}, models=("m",), keys=("k1", "k2"))) == ["model n"]
    assert lost_from(current, table(3, {}, models=("m", "n"), keys=("k1",))) == ["1 key(s)"]
    # Back in revision but complete (a backup imported): taken.
    assert lost_from(current, table(3, {}, models=("m", "n"), keys=("k1", "k2"))) == []
    # Forward in revision: the registry's truth, whatever it removed.
    assert lost_from(current, table(51, {}, models=(), keys=())) == []
