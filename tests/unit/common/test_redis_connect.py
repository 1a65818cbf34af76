"""Parsing every --redis-url form (no Redis needed: clients connect lazily)."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from services.common import redis_connect as rc
from services.registry.scripts import KeyLayout


def test_plain_and_tls_urls():
    t = rc.parse_url("redis://u%40x:p%3Aw@10.0.0.1:6380/2")
    assert (t.mode, t.tls, t.hosts, t.db, t.username, t.password) == ("single", False, (("10.0.0.1", 6380),), 2,
                                                                        "u@x", "p:w")
    t = rc.parse_url("rediss://:secret@redis.example?ca=/ca.pem&cert=/c.pem&key=/k.pem&verify=none")
    assert t.tls and t.password == "secret" and t.username is None and t.hosts == (("redis.example", 6379),)
    assert t.tls_options == {"ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
                             "ssl_cert_reqs": "none"}
    assert rc.parse_url("unix:///run/redis.sock?db=3").path == "/run/redis.sock"


def test_sentinel_and_cluster_urls():
    t = rc.parse_url("redis+sentinel://app:pw@s1:26379,s2:26380,[::1]:26381/mymaster/4?sentinel_password=sp")
    assert t.mode == "sentinel" and t.master == "mymaster" and t.db == 4
    assert t.hosts == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert (t.username, t.password, t.sentinel_auth) == ("app", "pw", {"password": "sp"})
    t = rc.parse_url("rediss+cluster://n1:7000,n2:7001?ca=/ca.pem")
    assert t.is_cluster and t.tls and t.hosts == (("n1", 7000), ("n2", 7001))
    assert isinstance(rc.connect("redis+cluster://127.0.0.1:1"), RedisCluster)
    # A client pinned to one slot is a plain client whatever the mode.
    assert not isinstance(rc.connect("redis+cluster://127.0.0.1:1", slot_key="{a}:b"), RedisCluster)


@pytest.mark.parametrize(("url", "message"), [
    ("http://h:1/0", "unknown Redis URL scheme 'http://'"),
    ("127.0.0.1:6379", "is not a Redis URL"),
    ("redis://h:99999/0", "bad port '99999'"),
    ("redis://h1:1,h2:2/0", "use redis+sentinel:// or redis+cluster://"),
    ("redis+sentinel://h:26379", "names no master"),
    ("redis+cluster://h:7000/3", "only database 0"),
    ("redis://h/notadb", "bad database 'notadb'"),
    ("redis://h/0?ca=/x", "needs TLS"),
    ("rediss://h/0?verify=maybe", "verify=maybe"),
    ("redis://:hunter2@h/0?bogus=1", "unknown parameter 'bogus'"),
])
def test_bad_urls_are_refused_by_name(url, message):
    with pytest.raises(rc.RedisUrlError, match=message.replace("?", r"\?").replace("+", r"\+")) as info:
        rc.parse_url(url)
    assert "hunter2" not in str(info.value)


def test_redacted_and_with_user():
    assert rc.redacted("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert rc.redacted("redis://pw@h:1/0") == "redis://***@h:1/0"
    assert rc.redacted("redis+sentinel://s:1/m?sentinel_password=x&a=b") == "redis+sentinel://s:1/m?sentinel_password=***&a=b"
    assert rc.with_user("redis://old:x@h:1/0", "router", "p/w") == "redis://router:p%2Fw@h:1/0"
    assert rc.parse_url(rc.with_user("redis://h:1/0", "router", "p/w")).password == "p/w"


def test_registry_keys_share_one_hash_tag_on_a_cluster_only():
    from redis.crc import key_slot

    plain = KeyLayout.for_prefix("shunter:")
    assert plain.revision == "shunter:registry:revision"  # unchanged on one server / Sentinel
    tagged = KeyLayout.for_prefix("shunter:", cluster=True)
    assert tagged.revision == "{shunter:registry}:revision"
    names = [*tagged.script_keys, tagged.versions("digits"), tagged.events, tagged.wait_fence]
    assert len({key_slot(n.encode()) for n in names}) == 1
    assert KeyLayout.for_prefix("{tenant-a}:x", cluster=True).revision == "{tenant-a}:x:registry:revision"
