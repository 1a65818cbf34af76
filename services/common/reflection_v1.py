"""gRPC server reflection under ``grpc.reflection.v1`` as well as ``v1alpha``.

grpcio-reflection ships only the v1alpha service, while current clients (grpcurl, Postman,
grpc_cli) ask for v1 first. The two protos have the same messages, field for field, in a
different package, so their wire format is identical: the v1 service here parses requests
with the v1alpha message classes and answers through the v1alpha servicer. What it does
not do is describe itself (the v1 proto is not in the descriptor pool), which no client
needs to list and call services.
"""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection_v1(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serve reflection for ``service_names`` under the v1 service name on ``server``."""
    servicer = ReflectionServicer(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
