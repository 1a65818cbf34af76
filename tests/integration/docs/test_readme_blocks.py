"""The README works as pasted: its command blocks run, in order, from the repository root.

Each scenario runs README blocks in one bash session (readme_blocks.py says how: free
ports, foreground commands backgrounded until ready, no virtualenv on PATH, everything
stopped after) and compares the commands that failed with the ones the README says fail
on purpose. The standalone worker with its grpcurl and tritonclient blocks and the
settings block and the local cluster run in CI; several worker processes, the operators'
walkthrough, TLS and the quick start take minutes on a small machine and are marked
``slow`` (scripts/reliability).

Every runnable block must be run by a scenario here or be listed in ``NOT_RUN`` with the
reason, so a new README block fails this test until it is one or the other.
"""

from __future__ import annotations

import pytest

from tests.integration.docs.readme_blocks import Block, Outcome, Step, block, readme_blocks, run_scenario

#: README blocks no scenario runs, by section (heading prefix) and index (None: all of them), and why.
NOT_RUN: dict[tuple[str, int | None], str] = {
    ("Quick start", 0): "scripts/test runs the whole suite, this test included; scripts/demo is "
                        "test_quick_start_demo (slow), which runs that line alone",
    ("Router", 0): "a router like the walkthrough's (section 2 starts one the same way on the same Redis)",
    ("Rollouts", None): "not run here yet: continues the walkthrough with version 3 and a rollout that "
                        "needs minutes of traffic; covered by tests/integration/rollout",
    ("A/B report", None): "not run here yet: needs the rollout section's traffic; covered by tests/integration/rollout",
    ("Shadow report", None): "not run here yet: needs the rollout section's traffic; see tests/integration/rollout",
    ("Model monitoring and drift", None): "not run here yet: two 70 s benches; covered by tests/integration/monitoring",
    ("Batch jobs", None): "not run here yet: covered by tests/integration/jobs",
    ("Event-driven serving", None): "not run here yet: needs a Redis on 6379 and a producer; "
                                    "covered by tests/integration/jobs",
    ("Overload and failure handling", None): "not run here yet: flags shown on a router and worker",
    ("Observability: traces", 0): "docker (Jaeger); no container engine in CI",
    ("Observability: traces", 1): "not run here yet: needs an OTLP collector (the Jaeger above)",
    ("Payload logging", None): "a fragment (registry on 127.0.0.1:7000 and Redis on 6379 assumed)",
    ("Past one machine: Kubernetes, dashboards, alerts", None): "kubectl; no cluster in CI "
                                                                "(manifests are checked offline by tests/unit/deploy)",
    ("Redis Cluster, Sentinel and ACLs", None): "not run here yet: six redis-server processes and a cluster; "
                                                "covered by tests/integration/registry",
    ("Optimise a model: quantise, prune, distil, compile", None): "not run here yet: minutes of training "
                                                                  "on CPU (tests/integration/optimize)",
    ("Benchmarks", 3): "benchmarks run for minutes and the gpu profile needs a GPU; scripts/bench has its own tests",
    ("High-throughput clients: one stream to the router", None): "not run here yet: needs the local cluster's "
        "router and key; covered by tests/integration/router/test_bench_stream.py",
    ("Fault suite: killed processes, Redis faults, attacks, soak", None): "runs for minutes "
        "(scripts/reliability, not CI)",
}


def not_run_reason(b: Block) -> str | None:
    for (section, index), reason in NOT_RUN.items():
        if b.section.startswith(section) and index in (None, b.index):
            return reason
    return None


WORKER = [
    Step(block("Serve a model repository with a worker"), foreground="listening on"),
    Step(block("Call it with grpcurl")),
    Step(block("Call it with tritonclient")),
]
SETTINGS = [Step(block("Settings: flags and environment variables"))]
LOCAL_CLUSTER = [
    Step(block("A local cluster in one command"), foreground="^# Ctrl-C",
         then='source "$(sed -n "s/^#   in another shell: source //p" {log})"'),
    Step(block("A local cluster in one command", 1)),
    Step(block("A local cluster in one command", 2)),
]
SEVERAL_PROCESSES = [
    Step(block("Several processes on one port"), foreground="^shunter worker listening on"),
    Step(block("Call it with grpcurl")),
    Step(block("Benchmarks")),  # --connections 8 to reach every process
]
OPERATORS = [
    Step(block("1. Redis, an admin key, the registry")),
    Step(block("2. Register versions, start a worker and a router")),
    Step(block("3. Traffic: canary, blue-green, shadow, rollback")),
    Step(block("4. API keys")),
    Step(block("Security: credentials and TLS")),
    Step(block("8. Where artifacts may come from")),
    Step(block("9. Backups")),
    Step(block("Security: credentials and TLS", 3)),
]
TLS_CLUSTER = [
    Step(block("Security: credentials and TLS", 1), foreground="^# Ctrl-C",
         then='source "$(sed -n "s/^#   in another shell: source //p" {log})"'),
    Step(block("Security: credentials and TLS", 2)),
    # Through the TLS router without --cacert: bench trusts the exported $SHUNTER_TLS_CA.
    Step(block("Benchmarks", 1)),
    Step(block("Benchmarks", 2)),
]
SCENARIOS = {"worker": WORKER, "settings": SETTINGS, "local cluster": LOCAL_CLUSTER,
             "several processes": SEVERAL_PROCESSES, "operators": OPERATORS, "tls cluster": TLS_CLUSTER}


def report(outcome: Outcome) -> str:
    logs = "\n".join(f"--- {name}\n{text[-3000:]}" for name, text in outcome.logs.items())
    return (f"exit {outcome.returncode}\n--- stdout\n{outcome.stdout[-4000:]}\n"
            f"--- stderr\n{outcome.stderr[-6000:]}\n{logs}")


def test_every_readme_block_is_run_or_listed_with_a_reason():
    run = {step.block for steps in SCENARIOS.values() for step in steps}
    unaccounted = [b.name for b in readme_blocks() if b not in run and not_run_reason(b) is None]
    assert not unaccounted, f"README blocks neither run by a scenario nor listed in NOT_RUN: {unaccounted}"
    stale = [key for key in NOT_RUN if not any(b.section.startswith(key[0]) for b in readme_blocks())]
    assert not stale, f"NOT_RUN names sections the README no longer has: {stale}"


def test_standalone_worker_then_grpcurl_and_tritonclient(tmp_path):
    outcome = run_scenario(WORKER, tmp_path)
    assert outcome.failed == [], report(outcome)
    assert "grpc.health.v1.Health" in outcome.stdout and '"status": "SERVING"' in outcome.stdout, report(outcome)
    assert '"name": "digits"' in outcome.stdout  # ModelMetadata
    assert "raw_output_contents" in outcome.stdout or "rawOutputContents" in outcome.stdout  # minilm ModelInfer
    assert "[0 1 2 3]" in outcome.stdout, report(outcome)  # tritonclient: the first four digits


def test_settings_block_fails_as_it_says(tmp_path):
    outcome = run_scenario(SETTINGS, tmp_path)
    assert len(outcome.failed) == 1 and "SHUNTER_ROUTER_REQUEST_TIMEOUT_S=0" in outcome.failed[0], report(outcome)
    assert "shunter router: $SHUNTER_ROUTER_REQUEST_TIMEOUT_S must be more than 0, got 0.0" in outcome.stderr
    assert "exit 2" in outcome.stdout and "--eject-cooloff-s" in outcome.stdout


def test_local_cluster_then_grpcurl_traffic_bench_and_tritonclient(tmp_path):
    outcome = run_scenario(LOCAL_CLUSTER, tmp_path)
    assert outcome.failed == [], report(outcome)
    assert "Status codes:" in outcome.stdout and "OK" in outcome.stdout  # bench's table
    assert "weights:" in outcome.stdout  # traffic set


@pytest.mark.slow
def test_several_worker_processes_on_one_port(tmp_path):
    outcome = run_scenario(SEVERAL_PROCESSES, tmp_path)
    assert outcome.failed == [], report(outcome)
    assert "and 8 connection(s)" in outcome.stdout, report(outcome)


@pytest.mark.slow
def test_operators_walkthrough(tmp_path):
    outcome = run_scenario(OPERATORS, tmp_path)
    expected = [
        "shunter versions set-state digits 2 archived",  # section 3: fails on purpose (2 still has traffic)
        "--artifact /etc/hostname",  # section 8: outside the artifact roots
        "--artifact /dev/zero",  # section 8: not a regular file
        "127.0.0.1:",  # the TLS block: grpcurl without a client certificate is refused
    ]
    assert len(outcome.failed) == len(expected), report(outcome)
    for failed, wanted in zip(outcome.failed, expected, strict=True):
        assert wanted in failed, report(outcome)
    assert "is outside the artifact roots" in outcome.stderr
    assert "is not a regular file or directory" in outcome.stderr
    assert "exported 1 models, 2 versions" in outcome.stdout and "imported 1 models" in outcome.stdout


@pytest.mark.slow
def test_tls_cluster_clients_trust_the_exported_ca(tmp_path):
    outcome = run_scenario(TLS_CLUSTER, tmp_path)
    assert outcome.failed == [], report(outcome)
    assert "Simulated users: 50, 50 answered by one version throughout" in outcome.stdout, report(outcome)


@pytest.mark.slow
def test_quick_start_demo(tmp_path):
    demo = Block("Quick start", 0, "bash", "scripts/demo\n")
    assert block("Quick start").text.startswith("scripts/demo ")
    outcome = run_scenario([Step(demo)], tmp_path, timeout_s=1200)
    assert outcome.failed == [] and outcome.returncode == 0, report(outcome)
