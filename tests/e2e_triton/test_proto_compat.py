"""Our inference proto is wire-compatible with the one tritonclient ships.

Our descriptors are read from a descriptor set made by protoc (not imported), since
one process cannot register both copies of the `inference` package.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path_factory.mktemp("desc") / "set.pb"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
            f"--descriptor_set_out={out}", "inference/grpc_service.proto",
        ],
        check=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return files[0]


def _messages(file_proto):
    def walk(prefix, messages):
        for message in messages:
            name = f"{prefix}.{message.name}"
            yield name, message
            yield from walk(name, message.nested_type)

    return dict(walk(file_proto.package, file_proto.message_type))


def test_every_field_matches_tritonclient(ours):
    pool = service_pb2.DESCRIPTOR.pool
    checked = 0
    for full_name, message in _messages(ours).items():
        theirs = pool.FindMessageTypeByName(full_name)
        for field in message.field:
            their_field = theirs.fields_by_name.get(field.name)
            assert their_field is not None, f"{full_name}.{field.name} is not in Triton's proto"
            assert their_field.number == field.number, f"{full_name}.{field.name} number differs"
            assert their_field.type == field.type, f"{full_name}.{field.name} type differs"
            checked += 1
    assert checked > 100


def test_service_methods_match_tritonclient(ours):
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    (service,) = ours.service
    assert service.name == "GRPCInferenceService"
    for method in service.method:
        their_method = theirs.methods_by_name[method.name]
        assert method.input_type.lstrip(".") == their_method.input_type.full_name
        assert method.output_type.lstrip(".") == their_method.output_type.full_name
        assert method.server_streaming == (method.name == "ModelStreamInfer")
