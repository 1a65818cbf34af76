"""Process groups in the shared cluster: `shunter router --processes 2` (both processes
follow the routing table, authenticate and route) and `shunter worker --registry ...
--processes 2` (each process registers its own address and routers use them all); SIGTERM
stops either group cleanly."""

from __future__ import annotations

import asyncio
import re

import grpc
import numpy as np

from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.client import auth, calc_request, output
from tests.integration.router.cluster import Cluster, metric, wait_for, worker_inferences
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


async def test_a_cluster_worker_group_registers_every_process_and_routers_use_them_all(cluster: Cluster):
    before = cluster.ready_workers()
    group = start_service(
        ["worker", "--registry", cluster.registry.address, "--serve", "calc,echo", "--trusted-repository",
         str(cluster.repository), "--port", "0", "--lease-ttl-s", "5", "--processes", "2"],
        env={"SHUNTER_ADMIN_KEY": cluster.admin_key},
    )
    try:
        pids = children(group)
        addresses = [m.group(1) for line in group.stdout_lines if (m := re.search(r" address (\S+) ", line))]
        assert len(pids) == 2 and len(set(addresses)) == 2, group.stdout_lines
        wait_for(lambda: cluster.ready_workers() >= before + 2, 120, "both processes ready in the registry")
        workers, revision = cluster.admin(lambda c: c.list_workers())
        assert set(addresses) <= {w.address for w in workers}
        cluster.wait_routers(revision)
        served_before = {pid: worker_inferences(url) for pid, url in pids.items()}
        async with grpc.aio.insecure_channel(cluster.routers[0].address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            # Four workers now (two plain, the two processes): enough calls that each gets some.
            for _ in range(80):
                await stub.ModelInfer(calc_request(version="1"), metadata=auth(cluster.keys["data"]), timeout=30)
        served = {pid: worker_inferences(url) - served_before[pid] for pid, url in pids.items()}
        assert all(count > 0 for count in served.values()), served
    finally:
        code = group.terminate()
    assert code == 0, group.logs()
    wait_gone(list(pids))
    # Both processes deregistered on the way out.
    wait_for(lambda: not set(addresses) & {w.address for w in cluster.admin(lambda c: c.list_workers())[0]},
             30, "the group's workers gone from the registry")
