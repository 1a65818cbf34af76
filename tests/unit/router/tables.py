"""Routing tables for router tests, built the way the registry sends them."""

from __future__ import annotations

from services.common.api_keys import key_hash
from services.gen.shunter.registry.v1 import registry_pb2 as rpb

DIGITS_SIGNATURE = rpb.Signature(
    inputs=[rpb.TensorSpec(name="input__0", datatype="FP32", shape=[4])],
    outputs=[rpb.TensorSpec(name="output__0", datatype="FP32", shape=[4])],
    max_batch_size=8,
)
TEXT_SIGNATURE = rpb.Signature(
    inputs=[rpb.TensorSpec(name="text", datatype="BYTES", shape=[1])],
    outputs=[rpb.TensorSpec(name="length", datatype="INT64", shape=[1])],
    max_batch_size=8,
)

DATA_KEY = "shk_000000000001_datakeydatakeydatakeydatakey"
LIMITED_KEY = "shk_000000000002_limitedlimitedlimitedlimited"
DIGITS_ONLY_KEY = "shk_000000000003_digitsonlydigitsonlydigitsonly"
REVOKED_KEY = "shk_000000000004_revokedrevokedrevokedrevoked"
PER_MODEL_KEY = "shk_000000000005_permodelpermodelpermodelpermodel"


def model(name: str, versions: dict[str, str], signature: rpb.Signature, **policy) -> rpb.Model:
    """versions: version -> state name (PRODUCTION, CANARY, ...)."""
    return rpb.Model(
        name=name,
        versions=[
            rpb.ModelVersion(
                model=name, version=v, backend="onnx", signature=signature, state=rpb.VersionState.Value(state),
                batching=rpb.BatchingConfig(enabled=True, max_queue_delay_us=500, preferred_batch_sizes=[4],
                                            max_queue_size=64),
            )
            for v, state in versions.items()
        ],
        policy=rpb.TrafficPolicy(model=name, **policy),
    )


def worker(address: str, ready: list[tuple[str, str]]) -> rpb.Worker:
    return rpb.Worker(
        worker_id=address,
        address=address,
        versions=[rpb.VersionStatus(model=m, version=v, ready=True) for m, v in ready],
    )


def keys() -> list[rpb.ApiKey]:
    return [
        rpb.ApiKey(key_id="000000000001", tenant="t", secret_sha256=key_hash(DATA_KEY)),
        rpb.ApiKey(key_id="000000000002", tenant="t", secret_sha256=key_hash(LIMITED_KEY),
                   rate=rpb.RateLimit(per_second=1, burst=2)),
        rpb.ApiKey(key_id="000000000003", tenant="t", secret_sha256=key_hash(DIGITS_ONLY_KEY), models=["digits"]),
        rpb.ApiKey(key_id="000000000004", tenant="t", secret_sha256=key_hash(REVOKED_KEY), revoked=True),
        rpb.ApiKey(key_id="000000000005", tenant="t", secret_sha256=key_hash(PER_MODEL_KEY),
                   rate=rpb.RateLimit(per_second=1, burst=1, per_model=True)),
    ]


def table(workers: list[rpb.Worker], revision: int = 1, **digits_policy) -> rpb.RoutingTable:
    policy = {"weights": {"1": 90, "2": 10}, "sticky_header": "X-User-Id", "fallback_version": "1"}
    policy.update(digits_policy)
    return rpb.RoutingTable(
        revision=revision,
        models=[
            model("digits", {"1": "PRODUCTION", "2": "CANARY", "3": "SHADOW"}, DIGITS_SIGNATURE, **policy),
            model("text", {"1": "PRODUCTION"}, TEXT_SIGNATURE, weights={"1": 100}),
        ],
        workers=workers,
        keys=keys(),
    )


def one_worker_router(fake, settings, **balancer_options):
    """A Router whose table has one worker, ``w1:1`` serving digits v1, answered by ``fake``
    (kept as ``router.fakes``): the setup the admission and learned-cap tests share."""
    from services.router.balancer import Balancer
    from services.router.core import Router
    from services.router.table import build_snapshot

    router = Router(settings)
    router.fakes = {fake.address: fake}
    router.balancer = Balancer(lambda address: router.fakes[address], **balancer_options)
    router.install(build_snapshot(table([worker(fake.address, [("digits", "1")])])))
    return router
