"""A backup carries the operator records too (issue 11 item 2): a drift reference profile,
a running rollout, its decision history and the traffic audit log survive export → a
wiped Redis (FLUSHALL) → import, through a real registry on a real redis-server; a backup
with a malformed records section is refused and leaves Redis as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import redis

from services.common.model_config import parse_model_config
from services.common.monitoring_config import DriftConfig
from services.common.rollout_client import RolloutClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from services.monitoring.client import MonitorClient
from services.monitoring.features import plan_features
from services.monitoring.profile import build_profile
from tests.integration.registry.conftest import AdminKey, start_registry
from tests.integration.registry.helpers import CONFIG_YAML, register_model
from tests.integration.registry.test_store_reset import _cli
from tests.support.processes import RedisServer

MODEL = "canaried"


def _profile(version: str) -> object:
    inputs = parse_model_config(CONFIG_YAML, "test config").inputs
    plan = plan_features(inputs, DriftConfig().max_features)
    sample = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    return build_profile(plan, {"x": sample}, len(sample), 10).to_proto(MODEL, version)


async def test_profiles_rollouts_and_audit_logs_survive_a_wipe(
    redis_server: RedisServer, admin: AdminKey, tmp_path: Path
) -> None:
    proc = start_registry(redis_server, admin)
    try:
        async with RolloutClient(proc.address, admin.key) as client:
            await register_model(client, tmp_path / "art", MODEL, versions=2)
            await client.set_weights(MODEL, {"1": 100})
            ready = [rpb.VersionStatus(model=MODEL, version=v, ready=True) for v in ("1", "2")]
            await client.register_worker("127.0.0.1:9", ready, ttl_s=60)
            started = await client.start_rollout(MODEL, "2", steps=[10, 50, 100], interval_s=3600)
            assert started.state == opb.RUNNING
            history_before = await client.rollout_history(MODEL)
            audit_before = await client.traffic_history(MODEL)
            assert [c.action for c in audit_before] == ["register", "set", "rollout-start"]
        async with MonitorClient(proc.address, admin.key) as monitor:
            stored = await monitor.set_profile(_profile("1"))

        backup = tmp_path / "backup.json"
        rc, out, err = _cli("registry", "export", str(backup), "--redis-url", redis_server.url)
        assert rc == 0, err
        assert "1 profiles, 1 rollouts, 1 decisions, 3 policy changes" in out, out
        exported = json.loads(backup.read_text())
        assert exported["format_version"] == 2 and "workers" not in exported

        proc.terminate()
        direct = redis.Redis.from_url(redis_server.url)
        direct.flushall()

        # A malformed records section: exit 2 naming it, and nothing is written.
        broken = json.loads(backup.read_text())
        broken["rollouts"][0]["baseline"] = "7"
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        rc, _, err = _cli("registry", "import", str(tmp_path / "broken.json"), "--redis-url", redis_server.url)
        assert rc == 2 and f"rollout of {MODEL}: its baseline '7'" in err and "nothing imported" in err, err
        assert direct.dbsize() == 0

        rc, out, err = _cli("registry", "import", str(backup), "--redis-url", redis_server.url)
        assert rc == 0, err
        records = "1 profiles, 1 rollouts, 1 decisions, 3 policy changes"
        assert f"and {records} (added: {records})" in out, out
        assert f"rollouts of {MODEL} were running and are imported paused" in out, out

        proc = start_registry(redis_server, admin)
        async with RolloutClient(proc.address, admin.key) as client:
            assert dict((await client.get_model(MODEL)).policy.weights) == {"1": 90, "2": 10}
            rollout = await client.get_rollout(MODEL)
            assert (rollout.version, rollout.baseline, rollout.step) == ("2", "1", 0)
            assert (rollout.state, rollout.fence) == (opb.PAUSED, 0)
            history = await client.rollout_history(MODEL)
            assert history[:-1] == history_before
            assert (history[-1].verdict, history[-1].actor) == ("pause", "import")
            assert await client.traffic_history(MODEL) == audit_before
            assert await client.list_workers() == []  # leases are not backed up
            assert (await client.resume_rollout(MODEL)).state == opb.RUNNING
        async with MonitorClient(proc.address, admin.key) as monitor:
            assert await monitor.get_profile(MODEL, "1") == stored

        # The same file again adds nothing and changes nothing (the resumed rollout stays so).
        rc, out, err = _cli("registry", "import", str(backup), "--redis-url", redis_server.url)
        assert rc == 0 and "(added: 0 profiles, 0 rollouts, 0 decisions, 0 policy changes" in out, err
        async with RolloutClient(proc.address, admin.key) as client:
            assert (await client.get_rollout(MODEL)).state == opb.RUNNING

        # An export from before the records (format version 1) still imports.
        old = {k: v for k, v in exported.items()
               if k not in ("profiles", "rollouts", "rollout_history", "traffic_audit")}
        (tmp_path / "v1.json").write_text(json.dumps({**old, "format_version": 1}))
        rc, out, err = _cli("registry", "import", str(tmp_path / "v1.json"), "--redis-url", redis_server.url)
        assert rc == 0 and "(0 versions/keys were missing) and 0 profiles, 0 rollouts" in out, err
    finally:
        proc.terminate()
