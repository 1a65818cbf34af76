"""deploy/k8s/batch-job.yaml: an Indexed Job whose pods each run one shard, resumably."""

from __future__ import annotations

import re

from services.cli.main import build_parser
from services.jobs.batch import parse_shard
from tests.support import deploy_files as d

JOB_FILE = d.K8S / "batch-job.yaml"


def job() -> dict:
    (only,) = d.documents(JOB_FILE)
    return only


def test_the_job_is_deployed_by_the_default_entry_point_with_the_shunter_label():
    assert JOB_FILE.resolve() in d.resource_files(d.K8S)
    obj = job()
    assert obj["kind"] == "Job"
    assert obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shunter"


def test_each_index_runs_its_own_shard_resumably_into_its_own_output():
    obj = job()
    spec = obj["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    refs = {m for a in container["args"] for m in re.findall(r"\$\((\w+)\)", a)}
    assert refs == {"JOB_COMPLETION_INDEX"} and refs <= set(env)
    outputs = set()
    for index in range(spec["completions"]):
        argv = [a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in container["args"]]
        args = build_parser().parse_args(argv)
        assert args.command == "batch" and args.resume
        assert parse_shard(args.shard) == (index, spec["completions"])
        outputs.add(str(args.output))
    assert len(outputs) == spec["completions"], "shards must not share an output directory"
    secret = env["SHUNTER_API_KEY"]["valueFrom"]["secretKeyRef"]["name"]
    assert f"secret generic {secret}" in JOB_FILE.read_text(), "the file says how to create the key's Secret"
