"""Reflection answers under grpc.reflection.v1 (what current grpcurl asks first) and v1alpha."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from tests.integration.router.cluster import write_repository
from tests.support.processes import start_service


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    service = start_service(["worker", "--model-repository", str(write_repository(tmp_path_factory.mktemp("m"))),
                             "--port", "0"])
    yield service
    service.terminate()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_list_services_and_describe_a_symbol(worker, version):
    with grpc.insecure_channel(worker.address) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ]
        listed, described = list(call(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto
