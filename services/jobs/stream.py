"""``shunter stream``: event-driven serving from a Redis Stream, no event lost, none doubled.

The loop, per consumer::

    own pending entries (after a start or a reconnect)  ─┐
    XAUTOCLAIM entries idle > --claim-idle-ms            ├→ decode → infer (router or worker)
    XREADGROUP … COUNT batch BLOCK block-ms  >           ─┘    → results XADD + XACK: one Lua call a batch

Delivery is at least once (an entry is acknowledged only after its result is written), and
the write is idempotent: the Lua script sets a dedupe key for (output stream, input entry id)
with SET NX and only then XADDs, then XACKs, all in one atomic step (one script call per batch). So a consumer killed
anywhere, or two consumers racing on a claimed entry, still leave exactly one result per
event in the output stream. Poison entries (undecodable, INVALID_ARGUMENT, or delivered more
than --max-deliveries times) are written to the dead-letter stream with their reason through
the same script and acknowledged. Only Redis 7.0 commands are used.

SIGTERM stops reading, finishes the batch in hand (inference, writes, acks) and exits 0.
A Redis outage is waited out: the consumer reconnects with backoff and re-reads its own
pending entries first.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.crc import key_slot

from services.common import redis_connect
from services.common.signature import Signature
from services.common.tls import ClientTls
from services.jobs import stream_metrics as m
from services.jobs.infer import InferClient, JobFailed, RowsRejected
from services.jobs.retry import RetryPolicy
from services.jobs.stream_codec import Event, Poison, dead_letter_fields, decode_event, result_fields

logger = logging.getLogger(__name__)

#: One call per batch. KEYS: output stream, input stream, then one dedupe key per entry.
#: ARGV: group, dedupe TTL (s), MAXLEN (0: none), then per entry its id, its number of
#: field/value items and those items. An entry's result is added only if its dedupe key was
#: not set yet (SET NX); every entry is acknowledged either way. Returns how many were added.
WRITE_AND_ACK = """
local group, ttl, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3])
local written, ids, i = 0, {}, 4
for k = 3, #KEYS do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local fields = {}
  for j = 1, n do fields[j] = ARGV[i + 1 + j] end
  i = i + 2 + n
  ids[#ids + 1] = id
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl) then
    if maxlen > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(fields))
    else
      redis.call('XADD', KEYS[1], '*', unpack(fields))
    end
    written = written + 1
  end
end
if #ids > 0 then redis.call('XACK', KEYS[2], group, unpack(ids)) end
return written
"""

REDIS_ERRORS: tuple[type[BaseException], ...] = (redis_errors.BusyLoadingError, *redis_connect.OUTAGE_ERRORS)


class StreamSetupError(Exception):
    """The streams, group or Redis cannot be used as asked; the message names which and why."""


@dataclass(frozen=True)
class StreamOptions:
    model: str
    redis_url: str
    input_stream: str
    output_stream: str
    group: str
    consumer: str
    target: str
    api_key: str | None = None
    #: TLS to the target (--tls-ca); None: plaintext.
    tls: ClientTls | None = None
    version: str = ""
    batch: int = 64
    block_ms: int = 100
    dead_letter_stream: str | None = None
    max_deliveries: int = 5
    claim_idle_ms: int = 30000
    maxlen: int = 0
    dedupe_ttl_s: int = 7 * 24 * 3600
    timeout_s: float = 30.0
    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=5, max_backoff_s=2.0))

    @property
    def dlq(self) -> str:
        return self.dead_letter_stream or f"{self.input_stream}:dlq"


def dedupe_key(output_stream: str, input_stream: str, entry_id: str) -> str:
    return f"shunter:stream:done:{output_stream}:{input_stream}:{entry_id}"


def live_consumer_window_ms(block_ms: int) -> int:
    """A consumer seen more recently than this is taken to be alive (it polls every block_ms)."""
    return 2 * block_ms + 1000


async def check_setup(r: aioredis.Redis, opts: StreamOptions) -> None:
    """Refuse what cannot work, with a message naming it; create the group when missing."""
    names = {"--input-stream": opts.input_stream, "--output-stream": opts.output_stream,
             "--dead-letter-stream": opts.dlq}
    if len(set(names.values())) < 3:
        raise StreamSetupError(f"input, output and dead-letter streams must differ ({names})")
    if redis_connect.is_cluster(opts.redis_url):
        # One Lua step writes a result, its dedupe key and the XACK: one slot on a cluster.
        slots = {key_slot(k.encode()) for k in
                 [*names.values(), dedupe_key(opts.output_stream, opts.input_stream, "0-0"),
                  dedupe_key(opts.dlq, opts.input_stream, "0-0")]}
        if len(slots) > 1:
            raise StreamSetupError(
                "on a Redis Cluster the input, output and dead-letter streams must share one hash tag, "
                "e.g. --input-stream '{digits}:in' --output-stream '{digits}:out' (dead letters default to IN:dlq)"
            )
    try:
        kind = _text(await r.type(opts.input_stream))
    except REDIS_ERRORS as exc:
        raise StreamSetupError(f"cannot reach Redis at {_safe_url(opts.redis_url)}: {exc}") from None
    except redis_errors.ResponseError as exc:
        raise StreamSetupError(f"Redis at {_safe_url(opts.redis_url)} refused: {exc}") from None
    if kind == "none":
        raise StreamSetupError(
            f"input stream '{opts.input_stream}' does not exist (producers create it with XADD; "
            f"or create it empty: XGROUP CREATE {opts.input_stream} {opts.group} 0 MKSTREAM)"
        )
    for flag, key in names.items():
        found = _text(await r.type(key))
        if found not in ("none", "stream"):
            raise StreamSetupError(f"{flag} '{key}' is a Redis {found}, not a stream")
    try:
        await r.xgroup_create(opts.input_stream, opts.group, id="0")
        logger.info("created group %s on %s at 0", opts.group, opts.input_stream)
    except redis_errors.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise StreamSetupError(f"cannot create group '{opts.group}': {exc}") from None
    for consumer in await r.xinfo_consumers(opts.input_stream, opts.group):
        name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
        if name == opts.consumer and consumer["idle"] < live_consumer_window_ms(opts.block_ms):
            raise StreamSetupError(
                f"consumer '{opts.consumer}' of group '{opts.group}' is active (seen {consumer['idle']} ms ago); "
                "give each consumer its own --consumer name"
            )


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return redis_connect.redacted(url)


class Consumer:
    def __init__(self, opts: StreamOptions, r: aioredis.Redis, client: InferClient, signature: Signature) -> None:
        self.opts = opts
        self.r = r
        self.client = client
        self.signature = signature
        self.stopping = asyncio.Event()
        self.write = r.register_script(WRITE_AND_ACK)
        self._cluster = redis_connect.is_cluster(opts.redis_url)
        self.datatypes = {spec.name: spec.datatype for spec in signature.outputs}
        self.max_rows = signature.max_batch_size if signature.batched else 1
        self.labels = {"group": opts.group}
        self.processed = 0
        self.dead_lettered = 0
        self._own_pending = True
        #: Results waiting for the writer: one batch is written while the next is inferred.
        self._writes: asyncio.Queue[tuple[list, list]] = asyncio.Queue(maxsize=1)
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._rng = random.Random()

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer())
        try:
            await self._read_loop()
            await self._writes.join()  # the batch in hand: results written, entries acknowledged
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _writer(self) -> None:
        """Write queued results until cancelled; a write is idempotent, so one that failed is tried again."""
        while True:
            results, dead = await self._writes.get()
            backoff = 0.1
            while True:
                try:
                    await self._write(results, dead)
                    break
                except REDIS_ERRORS as exc:
                    m.REDIS_UP.labels(**self.labels).set(0)
                    if self.stopping.is_set():
                        logger.warning("stopping with Redis unavailable (%s): %d results not written; their "
                                       "entries stay pending for another consumer", exc, len(results))
                        break
                    logger.warning("Redis unavailable while writing (%s); retrying in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(5.0, backoff * 2)
            self._writes.task_done()

    async def _read_loop(self) -> None:
        backoff = 0.1
        next_info = 0.0
        held: tuple[list, dict] | None = None
        while not self.stopping.is_set():
            try:
                # A batch whose inference failed is kept and tried again as it is: reading it
                # again from Redis would count one more delivery each time.
                entries, deliveries = held or await self._next_batch()
                held = None
                if entries:
                    held = (entries, deliveries)
                    await self._handle(entries, deliveries)
                    held = None
                m.REDIS_UP.labels(**self.labels).set(1)
                backoff = 0.1
                if time.monotonic() >= next_info:
                    await self._update_gauges()
                    next_info = time.monotonic() + 1.0
            except REDIS_ERRORS as exc:
                held = None  # re-read from the pending list once Redis is back
                m.REDIS_UP.labels(**self.labels).set(0)
                logger.warning("Redis unavailable (%s); retrying in %.1fs", exc, backoff)
                self._own_pending = True
                await self._sleep(backoff)
                backoff = min(5.0, backoff * 2)
            except JobFailed as exc:
                logger.warning("inference failed (%s); trying the batch again", exc)
                await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _next_batch(self) -> tuple[list[tuple[str, dict]], dict[str, int]]:
        opts = self.opts
        if self._own_pending:
            # Entries whose results are still queued are pending too: write them first.
            await self._writes.join()
            reply = await self.r.xreadgroup(opts.group, opts.consumer, {opts.input_stream: "0"}, count=opts.batch)
            entries = _entries(reply)
            if entries:
                return entries, await self._deliveries(entries)
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            cursor, claimed, deleted = await self._autoclaim()
            self._claim_cursor = cursor
            if cursor == "0-0":
                self._next_claim = time.monotonic() + max(0.05, opts.claim_idle_ms / 4000)
            if deleted:  # pending ids whose entries were trimmed away: nothing to do but acknowledge
                await self.r.xack(opts.input_stream, opts.group, *deleted)
            if claimed:
                m.CLAIMED.labels(**self.labels).inc(len(claimed))
                logger.info("claimed %d idle pending entries", len(claimed))
                return claimed, await self._deliveries(claimed)
        reply = await self.r.xreadgroup(opts.group, opts.consumer, {opts.input_stream: ">"}, count=opts.batch,
                                        block=opts.block_ms)
        return _entries(reply), {}

    async def _autoclaim(self) -> tuple[str, list[tuple[str, dict]], list[str]]:
        reply = await self.r.execute_command(
            "XAUTOCLAIM", self.opts.input_stream, self.opts.group, self.opts.consumer, self.opts.claim_idle_ms,
            self._claim_cursor, "COUNT", self.opts.batch,
        )
        cursor = _text(reply[0])
        claimed = [(_text(i), _fields(f)) for i, f in reply[1] if f is not None]
        deleted = [_text(i) for i in (reply[2] if len(reply) > 2 else [])]
        return cursor, claimed, deleted

    async def _deliveries(self, entries: Sequence[tuple[str, dict]]) -> dict[str, int]:
        """Delivery counts of entries this consumer holds pending (from XPENDING)."""
        ids = [i for i, _ in entries]
        rows = await self.r.xpending_range(self.opts.input_stream, self.opts.group, min=ids[0], max=ids[-1],
                                           count=len(ids) * 4 + 16, consumername=self.opts.consumer)
        wanted = set(ids)
        return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows
                if _text(row["message_id"]) in wanted}

    async def _handle(self, entries: list[tuple[str, dict]], deliveries: dict[str, int]) -> None:
        m.BATCH_SIZE.labels(**self.labels).observe(len(entries))
        events: list[Event] = []
        dead: list[tuple[str, dict, str, str]] = []  # id, fields, reason, label
        for entry_id, fields in entries:
            count = deliveries.get(entry_id, 1)
            if count > self.opts.max_deliveries:
                dead.append((entry_id, fields, f"delivered {count} times (--max-deliveries "
                                               f"{self.opts.max_deliveries})", "max_deliveries"))
                continue
            try:
                events.append(decode_event(entry_id, fields, self.signature))
            except Poison as exc:
                dead.append((entry_id, fields, f"undecodable: {exc}", "undecodable"))
        results: list[tuple[Event, dict[str, np.ndarray]]] = []
        try:
            for group in _by_shape(events, self.max_rows):
                await self._infer(group, results, dead)
        finally:
            # Hand over what is done even when the rest failed: fewer redeliveries.
            if results or dead:
                await self._writes.put((results, dead))

    async def _infer(self, events: list[Event], results: list, dead: list) -> None:
        inputs = {name: np.stack([e.inputs[name] for e in events]) for name in events[0].inputs}
        # A worker batch fails as a whole, so a rejection may be a neighbour's fault: a lone
        # event is tried twice before it is dead-lettered, a group is halved.
        tries = 2 if len(events) == 1 else 1
        for attempt in range(1, tries + 1):
            try:
                outputs = await self.client.infer(inputs)
                break
            except RowsRejected as exc:
                if len(events) > 1:
                    half = len(events) // 2
                    await self._infer(events[:half], results, dead)
                    await self._infer(events[half:], results, dead)
                    return
                if attempt == tries:
                    dead.append((events[0].id, events[0].fields, f"{exc.code}: {exc.message}", exc.code))
                    return
            except JobFailed:
                m.FAILED.labels(**self.labels).inc(len(events))
                raise
        for offset, event in enumerate(events):
            results.append((event, {name: array[offset] for name, array in outputs.items()}))

    async def _write(self, results: list, dead: list) -> None:
        if not results and not dead:
            return
        opts = self.opts
        batches = (
            (opts.output_stream, [(e.id, result_fields(e, outputs, self.datatypes)) for e, outputs in results]),
            (opts.dlq, [(entry_id, dead_letter_fields(entry_id, fields, reason))
                        for entry_id, fields, reason, _label in dead]),
        )
        calls = []
        for stream, items in batches:
            if not items:
                continue
            keys = [stream, opts.input_stream, *(dedupe_key(stream, opts.input_stream, i) for i, _ in items)]
            args: list = [opts.group, opts.dedupe_ttl_s, opts.maxlen]
            for entry_id, fields in items:
                args += [entry_id, len(fields), *fields]
            calls.append((keys, args))
        if self._cluster:  # a cluster pipeline does not load scripts; two calls at most
            written = [await self.write(keys=keys, args=args) for keys, args in calls]
        else:
            async with self.r.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await self.write(keys=keys, args=args, client=pipe)
                written = await pipe.execute()
        if results:
            m.DUPLICATES.labels(**self.labels).inc(len(results) - int(written[0]))
        self.processed += len(results)
        m.PROCESSED.labels(**self.labels).inc(len(results))
        for entry_id, _fields, reason, label in dead:
            logger.warning("dead-lettered %s: %s", entry_id, reason)
            m.DEAD_LETTERED.labels(group=opts.group, reason=label).inc()
        self.dead_lettered += len(dead)

    async def _update_gauges(self) -> None:
        for group in await self.r.xinfo_groups(self.opts.input_stream):
            if _text(group["name"]) == self.opts.group:
                m.PENDING.labels(**self.labels).set(group.get("pending") or 0)
                lag = group.get("lag")
                if lag is not None:
                    m.LAG.labels(**self.labels).set(lag)


def _by_shape(events: list[Event], max_rows: int) -> list[list[Event]]:
    """Events that can share a request (same per-row shapes), in order, at most max_rows each."""
    groups: dict[tuple, list[Event]] = {}
    for event in events:
        groups.setdefault(event.shape_key(), []).append(event)
    out = []
    for members in groups.values():
        for lo in range(0, len(members), max_rows):
            out.append(members[lo : lo + max_rows])
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw) -> dict[bytes, bytes]:
    if isinstance(raw, dict):
        return raw
    return {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}


def _entries(reply) -> list[tuple[str, dict]]:
    out = []
    for _stream, entries in reply or []:
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                continue
            out.append((_text(entry_id), _fields(fields)))
    return out


async def serve_stream(opts: StreamOptions, metrics_host: str, metrics_port: int) -> int:
    """Run one consumer until SIGTERM/SIGINT; returns the exit code (0 after a clean drain)."""
    from prometheus_client import start_http_server

    try:
        r = redis_connect.connect(opts.redis_url, socket_connect_timeout=5,
                                  socket_timeout=max(10, opts.block_ms / 500))
    except ValueError as exc:
        raise StreamSetupError(f"bad --redis-url: {exc}") from None
    try:
        await check_setup(r, opts)
        async with InferClient(opts.target, opts.model, version=opts.version, api_key=opts.api_key, tls=opts.tls,
                               timeout_s=opts.timeout_s, policy=opts.policy) as client:
            signature = await client.describe()
            consumer = Consumer(opts, r, client, signature)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, consumer.stopping.set)
            httpd, _ = start_http_server(metrics_port, addr=metrics_host)
            print(f"shunter stream consuming {opts.input_stream} group {opts.group} as {opts.consumer} "
                  f"metrics {metrics_host}:{httpd.server_address[1]}", flush=True)
            try:
                await consumer.run()
            finally:
                httpd.shutdown()
            logger.info("stopped: %d processed, %d dead-lettered", consumer.processed, consumer.dead_lettered)
            return 0
    finally:
        await r.aclose()


__all__ = ["StreamOptions", "StreamSetupError", "serve_stream"]
