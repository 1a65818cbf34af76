"""`shunter router --processes 2` in the shared cluster: both processes follow the routing
table, authenticate and route, and SIGTERM stops the group cleanly."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.client import auth, calc_request, output
from tests.integration.router.cluster import Cluster, metric, wait_for
from tests.integration.worker.test_worker_processes import CONNECTIONS, children, wait_gone
from tests.support.processes import start_service


async def test_a_router_group_routes_from_every_process(cluster: Cluster):
    group = start_service(
        ["router", "--registry", cluster.registry.address, "--redis-url", cluster.redis.url, "--port", "0",
         "--processes", "2"],
        env={"SHUNTER_ADMIN_KEY": cluster.admin_key},
    )
    try:
        pids = children(group)
        assert len(pids) == 2, group.stdout_lines
        _, revision = cluster.admin(lambda c: c.list_workers())
        for url in pids.values():
            wait_for(lambda u=url: metric(u, "shunter_router_routing_table_revision") >= revision, what=url)

        async def one_call(key: str | None):
            options = [("grpc.use_local_subchannel_pool", 1)]
            async with grpc.aio.insecure_channel(group.address, options=options) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                try:
                    return await stub.ModelInfer(calc_request(), metadata=auth(key), timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()

        responses = await asyncio.gather(*(one_call(cluster.keys["data"]) for _ in range(CONNECTIONS)))
        for response in responses:
            np.testing.assert_allclose(output(response), [[2, 4, 6, 8]])
        # Every process checks keys against the table it holds.
        refused = await asyncio.gather(*(one_call(None) for _ in range(4)))
        assert refused == [grpc.StatusCode.UNAUTHENTICATED] * 4
        served = {
            pid: metric(url, "shunter_requests_total", service="router", method="ModelInfer", code="OK")
            for pid, url in pids.items()
        }
        assert sum(served.values()) == CONNECTIONS and all(served.values()), served
    finally:
        code = group.terminate()
    assert code == 0, group.logs()
    wait_gone(list(pids))
    assert "Traceback" not in group.logs(), group.logs()
