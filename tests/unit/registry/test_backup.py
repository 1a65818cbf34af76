"""Backup files: a bad one is refused whole, with a message naming the record and problem."""

from __future__ import annotations

import copy
import json

import pytest

from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from services.registry import backup, backup_records
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
    again = backup.from_document(document).catalogue
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


# ---- format version 2: the operator records beside the catalogue -------------------------


def _records() -> backup_records.Records:
    import numpy as np

    from services.monitoring.profile import Profile

    profile = Profile(("x[0]",), (np.array([0.0, 1.0]),), (np.array([1, 2, 3]),), 6, 2).to_proto("m", "1")
    rollout = opb.Rollout(model="m", version="1", baseline="1", steps=[5, 50, 100], step=1, state=opb.RUNNING,
                          revision=4, fence=7, interval_s=30)
    decision = opb.Decision(model="m", version="1", at_ms=5, verdict="advance", actor="controller")
    decision.evidence.update({"errors": 0, "p99_ms": None})
    change = opb.PolicyChange(model="m", at_ms=3, who="k1", action="set",
                              after=rpb.TrafficPolicy(model="m", weights={"1": 100}))
    return backup_records.Records({("m", "1"): profile}, {"m": rollout}, {"m": [decision]}, {"m": [change]})


def test_the_records_read_back_as_they_were_written() -> None:
    records = _records()
    document = json.loads(json.dumps(backup.to_document(_catalogue(), records)))
    assert document["format_version"] == 2
    again = backup.from_document(document).records
    assert again == records
    assert again.counts() == "1 profiles, 1 rollouts, 1 decisions, 1 policy changes"


def test_a_format_1_backup_without_records_still_reads() -> None:
    document = backup.to_document(_catalogue())
    for section in ("profiles", "rollouts", "rollout_history", "traffic_audit"):
        del document[section]
    document["format_version"] = 1
    read = backup.from_document(document)
    assert read.catalogue.versions == _catalogue().versions
    assert read.records == backup_records.Records()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(rollouts={"m": {}}), "rollouts must be a list, got dict"),
        (lambda d: d["rollouts"][0].update(model="ghost"), r"rollouts\[0\] names model 'ghost'"),
        (lambda d: d["rollouts"][0].update(baseline="9"), "rollout of m: its baseline '9'"),
        (lambda d: d["rollouts"][0].update(step=3), "rollout of m: step 3 of steps"),
        (lambda d: d["rollouts"][0].update(state="NOPE"), r"rollouts\[0\]: .*NOPE"),
        (lambda d: d["rollouts"].append(copy.deepcopy(d["rollouts"][0])), "rollout of m appears twice"),
        (lambda d: d["profiles"][0].update(version="2"), "profile of m version 2: the backup has no such version"),
        (lambda d: d["profiles"][0].update(profile_id="0" * 16), "profile of m version 1: profile_id"),
        (lambda d: d["profiles"][0]["features"][0].update(edges=[1.0, 0.0]), "profile of m version 1: feature"),
        (lambda d: d["rollout_history"].update(m="many"), r"rollout_history\['m'\] must be a list"),
        (lambda d: d["rollout_history"]["m"][0].update(model="x"), r"rollout_history\['m'\]\[0\] names model 'x'"),
        (lambda d: d["traffic_audit"]["m"][0].update(when=1), r"traffic_audit\['m'\]\[0\]: .*when"),
        (lambda d: d["traffic_audit"].update(ghost=[]), r"traffic_audit\['ghost'\] names model 'ghost'"),
    ],
)
def test_a_bad_records_section_is_refused_with_the_problem_named(edit, message) -> None:
    document = json.loads(json.dumps(backup.to_document(_catalogue(), _records())))
    edit(document)
    with pytest.raises(backup.BackupError, match=message):
        backup.from_document(document)


def test_an_imported_rollout_is_fenced_0_and_a_running_one_paused() -> None:
    rollout = _records().rollouts["m"]
    written, pause = backup_records.restored_rollout(rollout, 99, "b.json")
    assert (written.state, written.fence, written.revision, written.updated_at_ms) == (opb.PAUSED, 0, 5, 99)
    assert "b.json" in written.reason and "shunter rollout resume m" in written.reason
    assert pause is not None and (pause.verdict, pause.actor, pause.weight, pause.rollout_revision) == (
        "pause", "import", 50, 5)
    rollout.state = opb.PROMOTED
    written, pause = backup_records.restored_rollout(rollout, 99, "b.json")
    assert (written.state, written.fence, written.revision, pause) == (opb.PROMOTED, 0, 4, None)
