"""The payload log against a real redis-server: records, sampling, trimming, Redis down."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis

from services.gen.inference import grpc_service_pb2 as pb
from services.router.payload_log import (
    RECORDS,
    PayloadLog,
    PayloadLogConfigError,
    StreamTarget,
    decode,
    parse_target,
)
from tests.support.processes import start_redis


@pytest.fixture
def server():
    started = start_redis()
    yield started
    started.kill()


def _target(server, stream: str = "payloads") -> StreamTarget:
    return parse_target(f"redis-stream://127.0.0.1:{server.port}/3/{stream}")


def _pair(value: float) -> tuple[bytes, bytes]:
    request = pb.ModelInferRequest(model_name="calc", id=f"r{value}")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.full((1, 4), value, "<f4").tobytes())
    texts = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    texts.contents.bytes_contents.append(b"typed")
    response = pb.ModelInferResponse(model_name="calc", model_version="1", id=f"r{value}")
    response.outputs.add(name="OUT", datatype="FP32", shape=[1, 4])
    response.raw_output_contents.append(np.full((1, 4), 2 * value, "<f4").tobytes())
    return request.SerializeToString(), response.SerializeToString()


async def _until(predicate, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s}s"
        await asyncio.sleep(0.02)


def _counter(outcome: str) -> float:
    return RECORDS.labels(outcome)._value.get()


def test_targets_are_parsed_and_bad_ones_named():
    assert parse_target("redis-stream://cache:6380/2/shunter:payloads") == StreamTarget(
        "redis://cache:6380/2", "shunter:payloads"
    )
    secret = parse_target("rediss-stream://logger:s3cret@cache:6380/0/s?ca=/ca.pem")
    assert secret.redis_url == "rediss://logger:s3cret@cache:6380/0?ca=/ca.pem"
    assert "s3cret" not in secret.display
    for bad in ("redis://cache:6379/0", "redis-stream://cache:6379/s", "redis-stream://cache:x/0/s",
                "redis-stream:///0/s", "redis-stream://cache:6379/zero/s"):
        with pytest.raises(PayloadLogConfigError, match=r"redis-stream://\[USER:PASSWORD@\]HOST:PORT/DB/STREAM"):
            parse_target(bad)
    with pytest.raises(PayloadLogConfigError) as refused:
        parse_target("redis-stream://u:hunter2@cache:x/0/s")
    assert "hunter2" not in str(refused.value)
    with pytest.raises(PayloadLogConfigError, match="payload sample"):
        PayloadLog(parse_target("redis-stream://cache/0/s"), 0.0)


async def test_sampled_records_reach_the_stream_and_decode(server):
    draws = iter([0.9, 0.1, 0.3, 0.6])  # kept when below the 0.5 sample
    log = PayloadLog(_target(server), 0.5, rng=lambda: next(draws))
    for value in (1.0, 2.0, 3.0, 4.0):
        log.offer("calc", "1", *_pair(value), latency_s=0.0015, trace_id="ab" * 16)
    await log.close()

    entries = redis.Redis(port=server.port, db=3).xrange("payloads")
    records = [decode(fields) for _, fields in entries]
    assert [r["id"] for r in records] == ["r2.0", "r3.0"]
    first = records[0]
    assert (first["model"], first["version"], first["latency_us"], first["trace_id"]) == ("calc", "1", 1500, "ab" * 16)
    np.testing.assert_array_equal(first["inputs"]["IN"], np.full((1, 4), 2.0, "<f4"))
    assert first["inputs"]["TEXT"].tolist() == [b"typed"]
    np.testing.assert_array_equal(first["outputs"]["OUT"], np.full((1, 4), 4.0, "<f4"))
    assert abs(first["ts_ms"] - time.time() * 1000) < 60_000
    assert log.written == 2 and log.dropped == 0


async def test_the_stream_is_trimmed_to_about_maxlen(server):
    log = PayloadLog(_target(server), 1.0, maxlen=10, queue_size=2000)
    pair = _pair(1.0)
    for _ in range(1000):
        log.offer("calc", "1", *pair, latency_s=0.001)
        await asyncio.sleep(0)
    await log.close()
    assert log.written == 1000
    length = redis.Redis(port=server.port, db=3).xlen("payloads")
    # MAXLEN ~ trims whole stream nodes (100 entries by default), never below maxlen.
    assert 10 <= length <= 10 + 100


async def test_redis_down_drops_and_counts_without_blocking_then_recovers(server):
    log = PayloadLog(_target(server), 1.0, queue_size=50, timeout_s=0.2, retry_after_s=0.1)
    pair = _pair(1.0)
    log.offer("calc", "1", *pair, latency_s=0.001)
    await _until(lambda: log.written >= 1, "the first record written")
    server.kill()
    full_before, failed_before = _counter("queue_full"), _counter("write_failed")
    for _ in range(500):
        # offer is synchronous: it cannot wait on Redis, and must not raise.
        log.offer("calc", "1", *pair, latency_s=0.001)
    assert log.dropped >= 500 - 50, "past the queue bound, records are dropped at once"
    assert _counter("queue_full") - full_before >= 450
    # What was queued fails to write, and is dropped too.
    await _until(lambda: log.dropped >= 500, "the queued records dropped")
    assert log.written == 1 and log.dropped == 500
    assert _counter("write_failed") > failed_before

    server.start()
    written = log.written
    deadline = time.monotonic() + 20
    while log.written == written:
        log.offer("calc", "1", *pair, latency_s=0.001)
        await asyncio.sleep(0.1)
        assert time.monotonic() < deadline, "the payload log did not write again after Redis came back"
    await log.close()
    assert redis.Redis(port=server.port, db=3).xlen("payloads") >= 1



@pytest.fixture
def password_redis(tmp_path):
    """A redis-server that wants a password (``s3cret``); yields its port."""
    import subprocess

    from tests.support.processes import free_port, redis_server_binary

    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--requirepass", "s3cret", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password="s3cret")
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield port
    proc.kill()
    proc.wait()


async def test_a_password_in_the_target_authenticates_and_a_missing_one_is_dropped_and_counted(password_redis):
    port = password_redis
    good = PayloadLog(parse_target(f"redis-stream://default:s3cret@127.0.0.1:{port}/0/s"), 1.0)
    anonymous = PayloadLog(parse_target(f"redis-stream://127.0.0.1:{port}/0/s"), 1.0, retry_after_s=0.05)
    for log in (good, anonymous):
        log.offer("calc", "1", *_pair(1.0), latency_s=0.001)
    await _until(lambda: good.written == 1 and anonymous.dropped == 1, "one written, one refused")
    await good.close()
    await anonymous.close()
    assert redis.Redis(port=port, password="s3cret").xlen("s") == 1


async def test_a_slow_redis_costs_records_not_requests(server):
    log = PayloadLog(_target(server), 1.0, queue_size=20, timeout_s=0.2, retry_after_s=0.05)
    pair = _pair(1.0)
    log.offer("calc", "1", *pair, latency_s=0.001)
    await _until(lambda: log.written == 1, "the first record written")
    # Redis stops answering writes for 3 s: XADD waits past the log's timeout.
    redis.Redis(port=server.port).execute_command("CLIENT", "PAUSE", "3000", "WRITE")
    failed_before = _counter("write_failed")
    for _ in range(200):  # synchronous: nothing here can wait for Redis
        log.offer("calc", "1", *pair, latency_s=0.001)
    assert log.dropped >= 200 - 20 - 1, "past the queue bound, records are dropped at once"
    await _until(lambda: _counter("write_failed") > failed_before and log.dropped + log.written == 201,
                 "the queued records dropped after the timeout, or written once Redis answered")
    await log.close()
