"""Reference files that do not fit a version's signature are refused with a message naming why."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.errors import NotFound
from services.common.model_config import version_config_text
from services.monitoring.client import MonitorClient


@pytest.fixture(scope="module")
def digits_v2(shunter, examples, tmp_path_factory):
    """digits version 2 registered with no profile; its config file."""
    config_text, _ = version_config_text(examples / "digits", "2")
    config = tmp_path_factory.mktemp("cfg") / "config.yaml"
    config.write_text(config_text)
    shunter("models", "register", "digits", "--version", "2", "--artifact", str(examples / "digits" / "2"),
            "--config", str(config))
    return config


@pytest.mark.parametrize(
    ("name", "write", "named"),
    [
        ("narrow.npy", lambda p: np.save(p, np.zeros((50, 32), np.float32)),
         "has rows of shape [32], but the signature says [64]"),
        ("ints.npy", lambda p: np.save(p, np.zeros((50, 64), np.int64)),
         "is int64 (integer), but the signature says FP32"),
        ("other.npz", lambda p: np.savez(p, pixels=np.zeros((50, 64), np.float32)),
         "no data for input(s) input__0"),
        ("table.csv", lambda p: p.write_text("1,2\n"), "unknown reference format '.csv'"),
        ("few.npy", lambda p: np.save(p, np.zeros((3, 64), np.float32)), "the reference has 3 rows"),
        ("bad.jsonl", lambda p: p.write_text('{"input__0": [1, 2]}\n{oops\n'), "bad.jsonl:2: not JSON"),
        ("strings.parquet",
         lambda p: pq.write_table(pa.table({"input__0": [["a"] * 64] * 20}), p),
         "but the signature says FP32"),
    ],
)
async def test_bad_reference_is_refused_and_nothing_stored(
    shunter, registry, admin, digits_v2, tmp_path, name, write, named
):
    path = tmp_path / name
    write(path)
    done = shunter("drift", "baseline", "digits", "2", "--from", str(path), code=2)
    assert named in done.stderr and "nothing stored" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    async with MonitorClient(registry.address, admin.key) as client:
        with pytest.raises(NotFound, match="has no reference profile"):
            await client.get_profile("digits", "2")


def test_register_with_a_bad_reference_registers_nothing(shunter, digits_v2, tmp_path, examples):
    path = tmp_path / "narrow.npy"
    np.save(path, np.zeros((50, 8, 8), np.float32))
    done = shunter("models", "register", "digits", "--version", "7", "--artifact", str(examples / "digits" / "2"),
                   "--config", str(digits_v2), "--reference", str(path), code=1)
    assert "shape [8, 8], but the signature says [64]" in done.stderr and "nothing registered" in done.stderr
    model = json.loads(shunter("models", "show", "digits", "--json").stdout)
    assert [v["version"] for v in model["versions"]] == ["2"]


def test_good_parquet_and_jsonl_references_are_stored(shunter, digits_v2, digits_sets, tmp_path):
    _, train = digits_sets
    rows = np.load(train)["input__0"]
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.table({"input__0": rows.tolist()}), parquet)
    out = shunter("drift", "baseline", "digits", "2", "--from", str(parquet)).stdout
    assert out.startswith(f"reference profile for digits version 2: 64 features from {len(rows)} rows")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"input__0": r}) + "\n" for r in rows[:200].tolist()))
    stored = json.loads(shunter("drift", "baseline", "digits", "2", "--from", str(jsonl), "--json").stdout)
    assert stored["rows"] == "200" and len(stored["features"]) == 64


def test_unknown_version_and_missing_key(shunter, digits_v2, digits_sets):
    _, train = digits_sets
    done = shunter("drift", "baseline", "digits", "99", "--from", str(train), code=1)
    assert "no version '99'" in done.stderr
    done = shunter("drift", "show", "nomodel", code=1)
    assert "unknown model 'nomodel'" in done.stderr


async def test_monitor_rpcs_need_an_admin_key(registry, digits_v2):
    from services.common.errors import Unauthenticated

    async with MonitorClient(registry.address, "not-a-key") as client:
        with pytest.raises(Unauthenticated):
            await client.drift("digits")
    async with MonitorClient(registry.address, None) as client:
        with pytest.raises(Unauthenticated, match="missing"):
            await client.get_profile("digits", "2")


async def test_the_registry_checks_profiles_and_counts_itself(registry, admin, digits_v2, digits_sets):
    """What the CLI checks, the service checks again: a hand-made profile or report must fit."""
    from services.common.errors import InvalidArgument
    from services.common.signature import TensorSpec
    from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
    from services.monitoring.features import plan_features
    from services.monitoring.profile import BinCounter, build_profile

    narrow = plan_features([TensorSpec("input__0", "FP32", (32,))], 128)
    wrong = build_profile(narrow, {"input__0": np.ones((50, 32), np.float32)}, 50, 10)
    async with MonitorClient(registry.address, admin.key) as client:
        with pytest.raises(InvalidArgument, match="32 features do not match the 64 of digits version 2"):
            await client.set_profile(wrong.to_proto("digits", "2"))
        with pytest.raises(NotFound, match="no version '5'"):
            await client.set_profile(wrong.to_proto("digits", "5"))

        train = np.load(digits_sets[1])["input__0"]
        plan = plan_features([TensorSpec("input__0", "FP32", (64,))], 128)
        good = build_profile(plan, {"input__0": train}, len(train), 10)
        stored = await client.set_profile(good.to_proto("digits", "2"))
        assert stored.profile_id == good.profile_id and stored.creator
        width = BinCounter(good).width
        report = mpb.DriftCounts(model="digits", version="2", profile_id=good.profile_id, window=1, window_s=60,
                                 rows=1, bins_per_feature=width, counts=[0] * (64 * width - 1))
        with pytest.raises(InvalidArgument, match="the profile needs 64 features x"):
            await client.report(report)
        report.profile_id = "an-old-profile"  # counted against a replaced baseline: dropped, current id back
        assert (await client.report(report)).profile_id == good.profile_id


async def test_a_worker_key_reads_profiles_and_reports_but_sets_nothing(registry, admin, digits_v2):
    from services.common.errors import PermissionDenied
    from services.common.registry_client import RegistryClient
    from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb

    async with RegistryClient(registry.address, admin.key) as client:
        worker_key = (await client.create_api_key("workers", role="worker")).secret
    async with MonitorClient(registry.address, worker_key) as client:
        try:
            await client.get_profile("digits", "2")
        except NotFound:
            pass  # allowed; whether a profile is stored depends on the tests before
        with pytest.raises(PermissionDenied, match="role worker, which may not call SetReferenceProfile"):
            await client.set_profile(mpb.ReferenceProfile(model="digits", version="2"))
        with pytest.raises(PermissionDenied, match="may not call GetDrift"):
            await client.drift("digits")
