"""Backup files: a bad one is refused whole, with a message naming the record and problem."""

from __future__ import annotations

import copy

import pytest

from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry import backup
from services.registry.catalogue import Catalogue

SHA = "a" * 64


def _catalogue() -> Catalogue:
    version = rpb.ModelVersion(model="m", version="1", artifact_uri="file:///models/m/1", sha256=SHA,
                               backend="onnx", state=rpb.PRODUCTION)
    key = rpb.ApiKey(key_id="k1", tenant="ops", admin=True, secret_sha256="b" * 64)
    policy = rpb.TrafficPolicy(model="m", weights={"1": 100})
    return Catalogue(7, {"m": {"1": version}}, {"m": policy}, {}, {"k1": key}, epoch="e1")


def test_a_backup_reads_back_as_it_was_written() -> None:
    document = backup.to_document(_catalogue())
    again = backup.from_document(document)
    assert again.revision == 7 and again.epoch == "e1"
    assert again.versions["m"]["1"] == _catalogue().versions["m"]["1"]
    assert dict(again.policies["m"].weights) == {"1": 100}
    assert again.keys["k1"].secret_sha256 == "b" * 64


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other"), "not a registry backup"),
        (lambda d: d.update(format_version=9), "format_version 9"),
        (lambda d: d["models"][0]["versions"][0].update(sha256="nothex"), "model 'm' version 1: sha256"),
        (lambda d: d["models"][0]["versions"][0].update(model="x"), "names model 'x'"),
        (lambda d: d["models"][0]["versions"][0].update(bogus=1), r"model 'm' versions\[0\]: .*bogus"),
        (lambda d: d["models"][0].update(name="Bad Name"), "model 'Bad Name'"),
        (lambda d: d["models"][0]["policy"].update(weights={"1": 60}), "weights must sum to 100"),
        (lambda d: d["models"][0]["policy"].update(weights={"2": 100}), "model 'm'"),
        (lambda d: d["keys"][0].update(secret_sha256="short"), "key k1: secret_sha256"),
        (lambda d: d["keys"].append(copy.deepcopy(d["keys"][0])), "key k1 appears twice"),
        (lambda d: d["keys"][0].update(admin=False), "no active admin key"),
    ],
)
def test_a_bad_backup_is_refused_with_the_problem_named(edit, message) -> None:
    document = backup.to_document(_catalogue())
    edit(document)
    with pytest.raises(backup.BackupError, match=message):
        backup.from_document(document)
