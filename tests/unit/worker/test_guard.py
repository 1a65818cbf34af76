"""The worker's inference guard and the key roles it relies on, without a server."""

from __future__ import annotations

import grpc
import pytest

from services.common import api_keys
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.worker.guard import InferenceGuard

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def key(role: str = "", admin: bool = False, revoked: bool = False) -> tuple[str, rpb.ApiKey]:
    key_id, secret = api_keys.new_key()
    return secret, rpb.ApiKey(key_id=key_id, role=role, admin=admin, revoked=revoked,
                              secret_sha256=api_keys.key_hash(secret))


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return api_keys.auth_metadata(secret)


@pytest.mark.parametrize(("role", "admin", "expected"), [
    ("", True, "admin"), ("", False, "client"), ("worker", False, "worker"), ("admin", True, "admin"),
])
def test_role_of_keys_made_before_and_after_roles(role, admin, expected):
    assert api_keys.role_of(rpb.ApiKey(role=role, admin=admin)) == expected


def test_the_role_table():
    assert api_keys.allowed("admin", "SetTrafficPolicy") and api_keys.allowed("admin", "AnythingAtAll")
    assert api_keys.allowed("worker", "Heartbeat") and not api_keys.allowed("worker", "SetTrafficPolicy")
    assert api_keys.allowed("router", "WatchRoutingTable") and not api_keys.allowed("router", "RegisterWorker")
    assert not api_keys.allowed("client", "WatchRoutingTable")
    assert not api_keys.allowed("nonsense", "ListModels")
    with pytest.raises(ValueError, match="unknown key role 'root'"):
        api_keys.check_role("root")


def test_the_guard_admits_router_and_admin_keys_only():
    guard = InferenceGuard(open_mode=False)
    keys = {name: key(*spec) for name, spec in {
        "router": ("router",), "admin": ("admin", True), "legacy_admin": ("", True), "client": ("client",),
        "worker": ("worker",), "revoked_router": ("router", False, True),
    }.items()}
    assert guard.refusal(METHOD, bearer(keys["router"][0]))[0] == grpc.StatusCode.UNAVAILABLE  # no table yet
    guard.update(k for _, k in keys.values())
    for name in ("router", "admin", "legacy_admin"):
        assert guard.refusal(METHOD, bearer(keys[name][0])) is None, name
    for name in ("client", "worker"):
        code, message = guard.refusal(METHOD, bearer(keys[name][0]))
        assert code == grpc.StatusCode.PERMISSION_DENIED and f"role {name}" in message and "ModelInfer" in message
    for metadata in ((), bearer(keys["revoked_router"][0]), bearer("shk_0123456789ab_" + "x" * 40),
                     (("authorization", "Basic abc"),)):
        assert guard.refusal(METHOD, metadata)[0] == grpc.StatusCode.UNAUTHENTICATED, metadata


def test_a_revocation_in_the_next_table_takes_effect():
    guard = InferenceGuard(open_mode=False)
    secret, router = key("router")
    guard.update([router])
    assert guard.refusal(METHOD, bearer(secret)) is None
    router.revoked = True
    guard.update([router])
    assert guard.refusal(METHOD, bearer(secret))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_open_mode_admits_anyone_and_says_so(caplog):
    guard = InferenceGuard(open_mode=True)
    assert guard.refusal(METHOD, ()) is None
    with caplog.at_level("WARNING"):
        guard.log_mode("0.0.0.0:8001")
    assert "OPEN MODE" in caplog.text and "0.0.0.0:8001" in caplog.text


def test_refusals_are_logged_at_most_once_per_interval(caplog):
    guard = InferenceGuard(open_mode=False)
    guard.update([])
    with caplog.at_level("WARNING"):
        for _ in range(50):
            guard.log_refusal(*guard.refusal(METHOD, ()))
    lines = [r for r in caplog.records if "refused a call" in r.getMessage()]
    assert len(lines) == 1 and "UNAUTHENTICATED" in lines[0].getMessage()
