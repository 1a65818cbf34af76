#!/usr/bin/env python
"""The floor for a Python gRPC hop: a proxy that forwards bytes and does nothing else.

    python scripts/bench/passthrough_proxy.py WORKER_HOST:PORT    # prints its port

scripts/bench/router.py --baseline runs it next to the router, so the report separates
what the router's own work costs from what any grpc.aio hop costs on the same machine.
"""

from __future__ import annotations

import os
import sys

import grpc

METHODS = ("ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady", "ServerReady")


async def serve(target: str) -> None:
    channel = grpc.aio.insecure_channel(target)
    # A cluster worker serves routers and admins only: the key to present, as a router does.
    key = os.environ.get("SHUNTER_PROXY_KEY", "")
    metadata = (("authorization", f"Bearer {key}"),) if key else None

    def forward(name: str) -> grpc.RpcMethodHandler:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{name}")

        async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await call(raw, timeout=context.time_remaining(), metadata=metadata)

        return grpc.unary_unary_rpc_method_handler(handler)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {m: forward(m) for m in METHODS}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(sys.argv[1]))
