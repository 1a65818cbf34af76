"""Pure validation of registry writes."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import InvalidArgument, NotFound, ShunterError
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry import validation

CONFIG = """\
backend: onnx
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [-1]}]
outputs: [{name: y, datatype: INT64, shape: [1]}]
"""


def versions(**states: int) -> dict[str, rpb.ModelVersion]:
    return {v.lstrip("v"): rpb.ModelVersion(model="m", version=v.lstrip("v"), state=s) for v, s in states.items()}


LIVE = versions(v1=rpb.PRODUCTION, v2=rpb.CANARY, v3=rpb.SHADOW, v4=rpb.ARCHIVED)


@pytest.mark.parametrize("name", ["a", "digits", "m-1.v_2", "0abc"])
def test_good_names(name):
    assert validation.check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-x", ".x", "a b", "a/b", "é", "x" * 129])
def test_bad_names(name):
    with pytest.raises(InvalidArgument, match="model name"):
        validation.check_name(name)


@pytest.mark.parametrize("version", ["", "0", "01", "-1", "1.0", "v1", "1" * 19])
def test_bad_versions(version):
    with pytest.raises(InvalidArgument, match="positive integer"):
        validation.check_version(version)


def test_policy_is_normalised():
    policy = rpb.TrafficPolicy(model="m", weights={"1": 100, "2": 0}, shadow_version="3", fallback_version="2",
                               sticky_header="x-user-id", cache_enabled=True, cache_ttl_s=60)
    clean = validation.check_policy(policy, LIVE)
    assert dict(clean.weights) == {"1": 100}  # zero weights dropped
    assert (clean.shadow_version, clean.fallback_version, clean.cache_ttl_s) == ("3", "2", 60)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (dict(weights={"1": 50}), "sum to 100, got 50"),
        (dict(weights={"4": 100}), "version 4 of model 'm' is archived"),
        (dict(weights={"9": 100}), "version 9 of model 'm' is not registered"),
        (dict(weights={"1": 100}, shadow_version="1"), "shadow version 1 also has weight 100"),
        (dict(weights={"1": 100}, fallback_version="4"), "fallback version 4 of model 'm' is archived"),
        (dict(weights={"1": 100}, sticky_header="grpc-timeout"), "reserved"),
        (dict(weights={"1": 100}, cache_enabled=True, cache_ttl_s=10**7), "cache_ttl_s must be between"),
    ],
)
def test_bad_policies(policy, message):
    with pytest.raises(InvalidArgument) as raised:
        validation.check_policy(rpb.TrafficPolicy(model="m", **policy), LIVE)
    assert message in raised.value.message


def test_policy_of_unknown_model():
    with pytest.raises(NotFound):
        validation.check_policy(rpb.TrafficPolicy(model="m", weights={"1": 100}), {})


def test_archiving_needs_no_traffic():
    policy = rpb.TrafficPolicy(model="m", weights={"1": 100}, shadow_version="3", fallback_version="2")
    for version, role in (("1", "weight 100"), ("2", "fallback"), ("3", "shadow")):
        with pytest.raises(InvalidArgument, match=role):
            validation.check_archivable("m", version, policy)
    validation.check_archivable("m", "5", policy)
    validation.check_archivable("m", "1", None)


def test_build_version_reads_signature_and_batching_from_config():
    request = rpb.RegisterModelVersionRequest(
        model="m", version="3", artifact_uri="file:///x/model.onnx", sha256="a" * 64, config_yaml=CONFIG
    )
    version = validation.build_version(request, "key1", 1234)
    assert (version.backend, version.state, version.creator) == ("onnx", rpb.STAGED, "key1")
    assert version.created_at_ms == 1234
    assert list(version.signature.inputs[0].shape) == [-1]
    assert version.signature.outputs[0].datatype == "INT64"
    assert not version.batching.enabled


def test_build_version_names_the_bad_config_key():
    request = rpb.RegisterModelVersionRequest(
        model="m", version="3", artifact_uri="file:///x", sha256="a" * 64, config_yaml=CONFIG + "instancez: 2\n"
    )
    with pytest.raises(ShunterError, match="unknown key 'instancez'") as raised:
        validation.build_version(request, "k", 0)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
