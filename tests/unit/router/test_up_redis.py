"""The ACL users `shunter up` gives its Redis (services/cli/up_redis.py), as text."""

from __future__ import annotations

import hashlib
import stat

from services.cli import up_redis
from services.common.redis_connect import parse_url


def test_each_user_gets_its_own_password_stored_as_a_hash_only(tmp_path):
    users = up_redis.service_users()
    assert set(users) == {"registry", "router", "admin"}
    assert len({u.password for u in users.values()}) == 3
    path = tmp_path / "redis.acl"
    up_redis.write_acl_file(path, users)
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert text.splitlines()[0].startswith("user default off")
    for user in users.values():
        assert user.password not in text
        assert f"user {user.name} on #{hashlib.sha256(user.password.encode()).hexdigest()} " in text


def test_rules_scope_keys_and_commands():
    users = up_redis.service_users("acme:")
    assert "~acme:registry:* &acme:registry:events" in users["registry"].rules
    assert "~acme:rl:* ~acme:cache:*" in users["router"].rules and "&" not in users["router"].rules.split(
        "resetchannels", 1)[1]
    for name in ("registry", "router"):
        assert users[name].rules.startswith("resetchannels") and "-@dangerous" in users[name].rules
        assert "-@all" in users[name].rules
    cluster = up_redis.service_users(cluster=True)
    assert "~{shunter:registry}:*" in cluster["registry"].rules
    assert cluster["router"].rules.endswith("+cluster|slots +cluster|shards +command")


def test_urls_carry_each_user(tmp_path):
    users = up_redis.service_users()
    urls = up_redis.user_urls("redis://127.0.0.1:6379/0", users)
    for name, url in urls.items():
        target = parse_url(url)
        assert (target.username, target.password) == (name, users[name].password)
    up_redis.write_url_file(tmp_path / "redis-urls", urls)
    assert stat.S_IMODE((tmp_path / "redis-urls").stat().st_mode) == 0o600
