"""Lua scripts the registry runs in Redis, and the key layout they share.

Every script gets the same KEYS (see ``KeyLayout.script_keys``) and, as ARGV[1], the
pub/sub channel that wakes the watchers of every registry replica.

On a Redis Cluster every key, the per-model ``versions:`` hashes the scripts read from
ARGV included, carries one hash tag (``{shunter:registry}:revision`` for the default
prefix), so they all live in one slot and the scripts and WATCH transactions stay atomic.
On one server or behind Sentinel the names are unchanged (``shunter:registry:revision``),
so existing data keeps working; moving to a cluster goes through
``shunter registry export`` / ``import``. Scripts run
atomically, so a lease change and its revision bump can never be seen apart. Time
comes from Redis (``TIME``), so replicas with skewed clocks agree on lease expiry.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.redis_connect import hash_tagged


@dataclass(frozen=True)
class KeyLayout:
    """Names of the registry's Redis keys under one prefix (``--key-prefix``)."""

    prefix: str

    @classmethod
    def for_prefix(cls, prefix: str, *, cluster: bool = False) -> KeyLayout:
        """``cluster``: every name carries one hash tag (see the module docstring)."""
        if prefix and not prefix.endswith(":"):
            prefix += ":"
        base = prefix + "registry:"
        if cluster:
            base = hash_tagged(base)
        return cls(base)

    def __getattr__(self, name: str) -> str:  # revision, models, policies, ... (see SCRIPT_KEYS)
        # events: the pub/sub channel; wait_fence: written before WAIT (store.py).
        if name in SCRIPT_KEYS or name in ("events", "wait_fence"):
            return self.prefix + name
        raise AttributeError(name)

    def versions(self, model: str) -> str:
        return f"{self.prefix}versions:{model}"

    @property
    def script_keys(self) -> list[str]:
        return [self.prefix + name for name in SCRIPT_KEYS]


#: KEYS[1..] of every script, in this order.
SCRIPT_KEYS = (
    "revision",       # 1 string: the one revision counter, bumped by every change
    "models",         # 2 set: model names
    "policies",       # 3 hash: model -> TrafficPolicy
    "worker_addr",    # 4 hash: worker id -> address
    "worker_status",  # 5 hash: worker id -> Worker holding only `versions`
    "worker_fp",      # 6 hash: worker id -> fingerprint of what routing depends on
    "worker_ttl",     # 7 hash: worker id -> lease ttl in ms
    "leases",         # 8 zset: worker id -> expiry (ms since epoch, Redis clock)
    "keys",           # 9 hash: key id -> ApiKey (hash of the secret only)
    "key_hashes",     # 10 hash: sha256 of a key -> key id
    "epoch",          # 11 string: this store's identity; gone means Redis lost its data
)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_DROP_WORKER = """
local function drop_worker(id)
  local existed = redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('HDEL', KEYS[6], id)
  redis.call('HDEL', KEYS[7], id)
  redis.call('ZREM', KEYS[8], id)
  return existed
end
local function bump()
  local rev = redis.call('INCR', KEYS[1])
  redis.call('PUBLISH', ARGV[1], rev)
  return rev
end
"""

#: -> {revision, now_ms, policies, addrs, statuses, leases, keys, epoch, ttls, models, versions...}
SNAPSHOT = (
    _NOW
    + """
local out = {tonumber(redis.call('GET', KEYS[1]) or '0'), now,
  redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4]),
  redis.call('HGETALL', KEYS[5]), redis.call('ZRANGE', KEYS[8], 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[9]), redis.call('GET', KEYS[11]) or '', redis.call('HGETALL', KEYS[7])}
local models = redis.call('SMEMBERS', KEYS[2])
out[10] = models
for i, m in ipairs(models) do out[10 + i] = redis.call('HGETALL', ARGV[2] .. m) end
return out
"""
)

#: Drop leases past their expiry (unless ARGV[2] is "1": a grace period, sweep nothing);
#: bump once if any went. -> {revision, dropped, epoch}
SWEEP = (
    _NOW
    + _DROP_WORKER
    + """
local expired = {}
if ARGV[2] ~= '1' then expired = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', '(' .. now) end
for _, id in ipairs(expired) do drop_worker(id) end
local rev
if #expired > 0 then rev = bump() else rev = tonumber(redis.call('GET', KEYS[1]) or '0') end
return {rev, #expired, redis.call('GET', KEYS[11]) or ''}
"""
)

#: ARGV: channel, id, address, status, fingerprint, ttl_ms -> {revision, expires_at_ms}
REGISTER_WORKER = (
    _NOW
    + _DROP_WORKER
    + """
local id, ttl = ARGV[2], tonumber(ARGV[6])
redis.call('HSET', KEYS[4], id, ARGV[3])
redis.call('HSET', KEYS[5], id, ARGV[4])
redis.call('HSET', KEYS[6], id, ARGV[5])
redis.call('HSET', KEYS[7], id, ttl)
redis.call('ZADD', KEYS[8], now + ttl, id)
return {bump(), now + ttl}
"""
)

#: ARGV: channel, id, status, fingerprint, grace -> {alive, revision or 0, expires_at_ms, ttl_ms}
#: In a grace period (grace "1") a lease that expired but is still recorded is renewed.
HEARTBEAT = (
    _NOW
    + _DROP_WORKER
    + """
local id = ARGV[2]
local expires = redis.call('ZSCORE', KEYS[8], id)
local ttl = tonumber(redis.call('HGET', KEYS[7], id) or '0')
if not expires or ttl == 0 or (tonumber(expires) < now and ARGV[5] ~= '1') then
  if drop_worker(id) == 1 then bump() end
  return {0, 0, 0, 0}
end
redis.call('ZADD', KEYS[8], now + ttl, id)
redis.call('HSET', KEYS[5], id, ARGV[3])
local rev = 0
if redis.call('HGET', KEYS[6], id) ~= ARGV[4] then
  redis.call('HSET', KEYS[6], id, ARGV[4])
  rev = bump()
end
return {1, rev, now + ttl, ttl}
"""
)

#: ARGV: channel, id -> revision (0: there was no such lease)
DEREGISTER_WORKER = (
    _DROP_WORKER
    + """
if drop_worker(ARGV[2]) == 1 then return bump() end
return 0
"""
)

#: ARGV: channel, sha256 -> ApiKey bytes or nil
LOOKUP_KEY = """
local id = redis.call('HGET', KEYS[10], ARGV[2])
if not id then return false end
return redis.call('HGET', KEYS[9], id)
"""

#: Insert a key unless its hash is known. ARGV: channel, key id, sha256, ApiKey -> revision or 0
ADD_KEY_IF_ABSENT = (
    _DROP_WORKER
    + """
if redis.call('HSETNX', KEYS[10], ARGV[3], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[9], ARGV[2], ARGV[4])
return bump()
"""
)

#: Give a store its identity if it has none. ARGV: channel, epoch -> 1 if set, else 0
INIT_EPOCH = """
if redis.call('SETNX', KEYS[11], ARGV[2]) == 1 then return 1 end
return 0
"""
