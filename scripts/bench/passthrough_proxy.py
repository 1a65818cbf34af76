#!/usr/bin/env python
"""The floor for a Python gRPC hop: a relay that forwards bytes and does nothing else.

    python scripts/bench/passthrough_proxy.py WORKER_HOST:PORT    # prints "relay port N"

Unary calls are forwarded as they come; a ModelStreamInfer stream gets one stream to the
worker, messages passed each way as bytes. Nothing is parsed, there is no auth and no choice
of worker. The report's router section (`relay: true` points of matrix.yaml) puts it where
the router stands, so that what the router's own work costs shows above what any grpc.aio
hop costs on the same machine.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import grpc

SERVICE = "inference.GRPCInferenceService"
UNARY = ("ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady", "ServerReady", "ServerMetadata")


async def serve(target: str) -> None:
    channel = grpc.aio.insecure_channel(target)
    # A cluster worker serves routers and admins only: the key to present, as a router does.
    key = os.environ.get("SHUNTER_PROXY_KEY", "")
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    open_link = channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")

    def forward(name: str) -> grpc.RpcMethodHandler:
        call = channel.unary_unary(f"/{SERVICE}/{name}")

        async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await call(raw, timeout=context.time_remaining(), metadata=metadata)

        return grpc.unary_unary_rpc_method_handler(handler)

    async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        link = open_link(metadata=metadata)

        async def pump() -> None:
            async for raw in requests:
                await link.write(raw)
            await link.done_writing()

        writer = asyncio.ensure_future(pump())
        try:
            async for raw in link:
                yield raw
        finally:
            writer.cancel()

    handlers = {name: forward(name) for name in UNARY}
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"relay port {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(sys.argv[1]))
