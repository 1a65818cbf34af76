"""`shunter stream` against real Redis 7.0 and a real worker: no event lost, none doubled."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter

import numpy as np
import pytest
import redis

from services.jobs.stream import live_consumer_window_ms
from tests.integration.jobs.support import start_consumer, stream_command
from tests.integration.router.cluster import metric, wait_for
from tests.support.processes import ROOT, start_redis


@pytest.fixture
def redis_server():
    server = start_redis(appendonly=True)
    yield server
    server.kill()


def produce(r: redis.Redis, stream: str, values: np.ndarray, poison: dict[int, dict]) -> list[str]:
    """XADD one entry per row (JSON inputs; every other one raw), poison ones as given; returns ids."""
    ids = []
    pipe = r.pipeline(transaction=False)
    for i, row in enumerate(values):
        if i in poison:
            pipe.xadd(stream, poison[i])
        elif i % 2:
            pipe.xadd(stream, {"IN:data": row.tobytes(), "IN:datatype": "FP32", "IN:shape": "4"})
        else:
            pipe.xadd(stream, {"inputs": json.dumps({"IN": row.tolist()})})
        if len(pipe) >= 1000:
            ids += [i.decode() for i in pipe.execute()]
    ids += [i.decode() for i in pipe.execute()]
    return ids


def result_of(fields: dict[bytes, bytes]) -> np.ndarray:
    if b"outputs" in fields:
        return np.array(json.loads(fields[b"outputs"])["OUT"], dtype=np.float32)
    assert fields[b"OUT:datatype"] == b"FP32" and fields[b"OUT:shape"] == b"4"
    return np.frombuffer(fields[b"OUT:data"], dtype=np.float32)


def done_count(r: redis.Redis) -> int:
    return r.xlen("out") + (r.xlen("in:dlq") if r.exists("in:dlq") else 0)


def check_exactly_once(r: redis.Redis, ids: list[str], values: np.ndarray, poison: dict[int, dict]) -> dict:
    results = r.xrange("out")
    counts = Counter(fields[b"id"].decode() for _, fields in results)
    assert max(counts.values()) == 1, "an event has more than one result"
    good = {ids[i] for i in range(len(ids)) if i not in poison}
    assert set(counts) == good
    index = {entry_id: i for i, entry_id in enumerate(ids)}
    for _, fields in results:
        np.testing.assert_allclose(result_of(fields), values[index[fields[b"id"].decode()]] * 2)
    dead = {fields[b"id"].decode(): fields[b"reason"].decode() for _, fields in r.xrange("in:dlq")} if poison else {}
    assert len(r.xrange("in:dlq")) == len(dead) if poison else True
    assert set(dead) == {ids[i] for i in poison}
    assert r.xpending("in", "g")["pending"] == 0
    return dead


POISON = {
    17: {"inputs": "{not json"},
    250: {"inputs": json.dumps({"IN": [1, 2]})},
    4321: {"inputs": json.dumps({"OTHER": [1, 2, 3, 4]})},
    8000: {"IN:data": b"\x00\x01", "IN:datatype": "FP32", "IN:shape": "4"},
    9999: {"something": "else"},
}


def consumer_args(redis_url: str, target: str, name: str, *extra: str) -> list[str]:
    return ["picky", "--redis-url", redis_url, "--input-stream", "in", "--output-stream", "out", "--group", "g",
            "--consumer", name, "--target", target, "--batch", "64", "--claim-idle-ms", "500", *extra]


def test_ten_thousand_events_two_consumers_one_killed_exactly_one_result_each(redis_server, picky):
    r = redis.Redis.from_url(redis_server.url)
    values = np.random.default_rng(7).uniform(0, 5, size=(10_000, 4)).astype(np.float32)
    ids = produce(r, "in", values, POISON)
    a = start_consumer(*consumer_args(redis_server.url, picky.address, "a"))
    b = start_consumer(*consumer_args(redis_server.url, picky.address, "b"))
    try:
        wait_for(lambda: r.xlen("out") >= 1500, 60, "first results")
        a.kill()  # mid-stream: whatever it held pending is claimed by b after 500 ms idle
        wait_for(lambda: r.xlen("out") >= 5000, 60, "b going on alone")

        def a_idle_ms() -> int:
            found = [c["idle"] for c in r.xinfo_consumers("in", "g") if c["name"] == b"a"]
            return found[0] if found else 10**9

        wait_for(lambda: a_idle_ms() > live_consumer_window_ms(100), 30, "killed consumer seen as gone")
        a = start_consumer(*consumer_args(redis_server.url, picky.address, "a"))  # restarted, same name
        wait_for(lambda: done_count(r) >= 10_000 and r.xpending("in", "g")["pending"] == 0, 60, "every event done")
        assert a.terminate() == 0 and b.terminate() == 0
    finally:
        a.kill()
        b.kill()
    dead = check_exactly_once(r, ids, values, POISON)
    assert "not JSON" in dead[ids[17]]
    assert "shape [2]" in dead[ids[250]]
    assert "no 'IN'" in dead[ids[4321]]
    assert "needs 16" in dead[ids[8000]]
    assert "no field 'inputs'" in dead[ids[9999]]
    assert "Traceback" not in a.logs() + b.logs()


def test_redis_restarted_mid_stream_consumers_reconnect_and_finish(redis_server, picky):
    r = redis.Redis.from_url(redis_server.url)
    values = np.random.default_rng(8).uniform(0, 5, size=(3000, 4)).astype(np.float32)
    ids = produce(r, "in", values, {})
    consumers = [start_consumer(*consumer_args(redis_server.url, picky.address, name)) for name in ("a", "b")]
    try:
        wait_for(lambda: r.xlen("out") >= 500, 60, "first results")
        redis_server.kill()
        time.sleep(0.5)
        redis_server.start()
        r = redis.Redis.from_url(redis_server.url)
        wait_for(lambda: r.xlen("out") >= 3000 and r.xpending("in", "g")["pending"] == 0, 90, "every event done")
        for consumer in consumers:
            assert metric(consumer.metrics_url, "shunter_stream_redis_up") == 1
        assert [c.terminate() for c in consumers] == [0, 0]
    finally:
        for consumer in consumers:
            consumer.kill()
    check_exactly_once(r, ids, values, {})
    assert any("Redis unavailable" in c.logs() for c in consumers)


def test_model_rejections_and_redelivered_entries_go_to_the_dead_letter_stream(redis_server, picky):
    r = redis.Redis.from_url(redis_server.url)
    values = np.random.default_rng(9).uniform(0, 5, size=(40, 4)).astype(np.float32)
    # An entry already delivered 9 times to a consumer that vanished: the next delivery (a claim) is the 10th.
    late = r.xadd("in", {"inputs": json.dumps({"IN": [1, 1, 1, 1]})}).decode()
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "ghost", {"in": ">"}, count=1)
    r.xclaim("in", "g", "ghost", 0, [late], retrycount=9)
    poison = {5: {"inputs": json.dumps({"IN": [1, -1, 1, 1]})}}  # refused by the model: INVALID_ARGUMENT
    ids = produce(r, "in", values, poison)
    consumer = start_consumer(*consumer_args(redis_server.url, picky.address, "solo"), "--max-deliveries", "5")
    try:
        wait_for(lambda: r.xpending("in", "g")["pending"] == 0 and done_count(r) >= 41, 60, "all handled")
        assert metric(consumer.metrics_url, "shunter_stream_dead_lettered_total", reason="max_deliveries") == 1
        assert metric(consumer.metrics_url, "shunter_stream_dead_lettered_total", reason="INVALID_ARGUMENT") == 1
        assert consumer.terminate() == 0
    finally:
        consumer.kill()
    dead = {f[b"id"].decode(): f[b"reason"].decode() for _, f in r.xrange("in:dlq")}
    assert dead[ids[5]].startswith("INVALID_ARGUMENT") and "must not be negative" in dead[ids[5]]
    assert dead[late] == "delivered 10 times (--max-deliveries 5)"
    assert r.xlen("out") == 39


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-stream", "missing"], "input stream 'missing' does not exist"),
        (["--redis-url", "http://127.0.0.1:1/0"], "bad --redis-url"),
        (["--redis-url", "redis://127.0.0.1:1/0"], "cannot reach Redis at redis://127.0.0.1:1/0"),
        (["--output-stream", "a-string"], "--output-stream 'a-string' is a Redis string, not a stream"),
        (["--output-stream", "in"], "must differ"),
        (["--consumer", "busy"], "consumer 'busy' of group 'g' is active"),
    ],
)
def test_bad_setup_is_refused_with_a_message_naming_it(redis_server, picky, args, message):
    r = redis.Redis.from_url(redis_server.url)
    r.xadd("in", {"inputs": json.dumps({"IN": [1, 2, 3, 4]})})
    r.set("a-string", "x")
    r.xgroup_create("in", "g", id="$")
    busy = start_consumer(*consumer_args(redis_server.url, picky.address, "busy")) if "busy" in args else None
    base = {"--redis-url": redis_server.url, "--input-stream": "in", "--output-stream": "out", "--group": "g",
            "--consumer": "fresh", "--target": picky.address}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    flags = [part for pair in base.items() for part in pair]
    try:
        done = subprocess.run(stream_command("picky", *flags), cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        if busy is not None:
            assert busy.terminate() == 0
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert r.xlen("out") == 0 if r.exists("out") else True


def test_sigterm_finishes_the_batch_in_hand_and_exits_0(redis_server, picky):
    r = redis.Redis.from_url(redis_server.url)
    values = np.random.default_rng(10).uniform(0, 5, size=(3000, 4)).astype(np.float32)
    produce(r, "in", values, {})
    consumer = start_consumer(*consumer_args(redis_server.url, picky.address, "solo"))
    try:
        wait_for(lambda: r.xlen("out") >= 300, 60, "first results")
        assert consumer.terminate() == 0
    finally:
        consumer.kill()
    # Everything it read has its result and is acknowledged: nothing left pending under its name.
    pending = r.xpending("in", "g")
    assert pending["pending"] == 0, pending
    (group,) = r.xinfo_groups("in")
    assert r.xlen("out") == group["entries-read"] < 3000


def test_through_the_router_with_an_api_key(cluster, redis_server):
    r = redis.Redis.from_url(redis_server.url)
    values = np.random.default_rng(11).uniform(0, 5, size=(50, 4)).astype(np.float32)
    ids = produce(r, "in", values, {})
    consumer = start_consumer("calc", "--redis-url", redis_server.url, "--input-stream", "in", "--output-stream",
                              "out", "--group", "g", "--consumer", "c", "--target", cluster.routers[0].address,
                              "--api-key", cluster.keys["data"])
    try:
        wait_for(lambda: r.xlen("out") >= 50, 60, "results through the router")
        assert consumer.terminate() == 0
    finally:
        consumer.kill()
    check_exactly_once(r, ids, values, {})
