"""The optimisation report stored with a version (field 40): kept, bounded, and left out
of the routing table every router and worker follows."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry import validation
from services.registry.catalogue import Catalogue

CONFIG = """\
backend: onnx
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [4]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


def request(report: str) -> rpb.RegisterModelVersionRequest:
    return rpb.RegisterModelVersionRequest(
        model="m", version="2", artifact_uri="file:///models/m/2", sha256="a" * 64, config_yaml=CONFIG,
        optimize_report=report,
    )


def test_report_is_stored_and_bounded():
    version = validation.build_version(request("# shunter optimize: m version 1\n"), "admin", 1)
    assert version.optimize_report.startswith("# shunter optimize")
    with pytest.raises(InvalidArgument, match="optimize_report is larger than"):
        validation.build_version(request("x" * (validation.MAX_REPORT_BYTES + 1)), "admin", 1)


def test_routing_table_leaves_reports_out():
    version = validation.build_version(request("a long report"), "admin", 1)
    catalogue = Catalogue(revision=3, versions={"m": {"2": version}})
    assert catalogue.model("m").versions[0].optimize_report == "a long report"
    (model,) = catalogue.routing_table.models
    assert model.versions[0].version == "2" and model.versions[0].optimize_report == ""
