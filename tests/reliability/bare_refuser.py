"""A bare gRPC server (grpc.aio on uvloop, as the services run) whose ModelInfer refuses
every call at once with UNAVAILABLE: no Shunter code at all. The overload scenarios send
it the same open loop as the service, so RELIABILITY.md shows what refusal latency this
machine allows right now (on a shared 2-core host, often more than the 5 ms bar).

Run as ``python bare_refuser.py``; prints its port, serves until killed.
"""

from __future__ import annotations

import grpc
import uvloop


async def main() -> None:
    server = grpc.aio.server()

    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded: bare gRPC floor")

    handler = grpc.unary_unary_rpc_method_handler(refuse)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main())
