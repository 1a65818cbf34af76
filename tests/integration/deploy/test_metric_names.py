"""Every metric the dashboard, the alerts, the adapter rules and the KEDA trigger use is
exported by a live cluster: real Redis, registry, worker and router processes, scraped
over HTTP after some traffic (an OK call, a cache miss and hit, a rate-limited call).

A name counts as present when a service exposes its family (HELP and TYPE lines, which
prometheus_client writes even for a labelled metric with no series yet) with a sample
name that PromQL would select: ``_total`` for counters, ``_bucket``/``_sum``/``_count``
for histograms, the bare name for gauges."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.router.client import Client, auth, calc_request
from tests.integration.router.cluster import start_cluster
from tests.support import deploy_files as d

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "unknown": ("",),
}


def exported_names(url: str) -> set[str]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def used_names() -> dict[str, set[str]]:
    sources = {
        "dashboard": [d.grafana_to_promql(e) for e in d.dashboard_exprs()],
        "alerts": [r["expr"] for r in d.alert_rules()],
        "adapter": d.adapter_queries(),
        "keda": d.keda_queries(),
    }
    return {where: set().union(*(d.metric_names(e) for e in exprs)) for where, exprs in sources.items()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = start_cluster(tmp_path_factory.mktemp("metrics-cluster"), workers=1, routers=1)
    yield started
    started.stop()


async def _traffic(cluster) -> None:
    router = cluster.routers[0].address
    async with Client(router) as client:
        await client.stub.ModelInfer(calc_request(), metadata=auth(cluster.keys["data"]), timeout=10)
        for _ in range(30):  # the "limited" key allows a burst of 10
            try:
                await client.stub.ModelInfer(calc_request(), metadata=auth(cluster.keys["limited"]), timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        cluster.set_policy("calc", {"1": 100}, cache_enabled=True, cache_ttl_s=60)
        for _ in range(2):  # a miss, then a hit
            request = calc_request((9.0, 8.0, 7.0, 6.0))
            await client.stub.ModelInfer(request, metadata=auth(cluster.keys["data"]), timeout=10)


def test_every_metric_the_dashboards_and_rules_use_is_exported(cluster):
    asyncio.run(_traffic(cluster))
    services = [*cluster.routers, *cluster.workers, cluster.registry]
    exported = set().union(*(exported_names(s.metrics_url) for s in services))
    for where, names in used_names().items():
        missing = names - exported
        assert not missing, f"{where} uses metrics no Shunter service exports: {sorted(missing)}"
    # The check can fail: a name that is not exported is reported.
    assert "shunter_worker_queue_depth_total" not in exported
