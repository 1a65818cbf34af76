"""deploy/k8s: every object validates offline, and the manifests say what the issue asks.

Core objects against Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: unknown
fields are errors) for a named version; KEDA's ScaledObject and the Prometheus Adapter's
rules against the fields their documentation defines (schemas.py). The rest reads the
objects for what an operator relies on: probes, drain times, budgets, spread, GPU
placement, who may reach whom, where keys come from, flags that the CLI accepts.
"""

from __future__ import annotations

import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.cli.main import build_parser
from services.worker import metrics as worker_metrics
from tests.support import deploy_files as d
from tests.unit.deploy import schemas

K8S_VERSIONS, CRD_KINDS = d.K8S_VERSIONS, d.CRD_KINDS
SHUNTER_IMAGES = ("shunter:", "shunter-worker:")
ALL = list(d.all_objects())


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def shunter_containers(objects):
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container["image"].startswith(SHUNTER_IMAGES):
                    yield obj, container


def flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def test_every_manifest_file_is_in_a_kustomization():
    listed = {p for entry in d.ENTRY_POINTS for p in d.resource_files(entry)}
    on_disk = {p.resolve() for p in d.K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk - listed == set(), "files no entry point deploys (add them to a kustomization's resources)"
    assert all(p.exists() for p in listed)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(version):
    checked = 0
    for path, obj in ALL:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(d.ROOT)}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 15


def test_the_validator_rejects_a_misspelt_field():
    """The check above can fail: a typo in a probe is an error, not silently dropped."""
    deployment = next(o for _, o in ALL if o["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_keda_scaled_objects_match_the_documented_fields():
    scaled = [o for _, o in ALL if o["kind"] == "ScaledObject"]
    assert scaled
    for obj in scaled:
        jsonschema.validate(obj, schemas.SCALED_OBJECT)
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "prometheus"
            meta = trigger["metadata"]
            assert float(meta["threshold"]) > float(meta["activationThreshold"]) >= 0
    bad = yaml.safe_load(yaml.safe_dump(scaled[0]))
    bad["spec"]["triggers"][0]["metadata"]["treshold"] = "1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas.SCALED_OBJECT)


def test_adapter_rules_match_the_documented_fields_and_fill_in_to_promql():
    config = yaml.safe_load(d.ADAPTER_CONFIG.read_text())
    jsonschema.validate(config, schemas.ADAPTER_CONFIG)
    for query in d.adapter_queries():
        d.metric_names(query)  # raises on a query Prometheus would refuse
    for query in d.keda_queries():
        assert d.metric_names(query) == {worker_metrics.ROWS_PER_INSTANCE.NAME}


def test_workers_scale_on_the_rows_per_instance_gauge_and_routers_on_cpu_and_rate():
    adapter_names = {r["name"]["as"] for r in yaml.safe_load(d.ADAPTER_CONFIG.read_text())["rules"]}
    hpas = {o["metadata"]["name"]: o for _, o in ALL if o["kind"] == "HorizontalPodAutoscaler"}
    worker_metric = hpas["worker"]["spec"]["metrics"]
    assert [m["pods"]["metric"]["name"] for m in worker_metric] == [worker_metrics.ROWS_PER_INSTANCE.NAME]
    assert worker_metric[0]["pods"]["target"]["type"] == "AverageValue"
    router_metrics = hpas["router"]["spec"]["metrics"]
    assert {m["type"] for m in router_metrics} == {"Resource", "Pods"}
    assert next(m for m in router_metrics if m["type"] == "Resource")["resource"]["name"] == "cpu"
    pod_metrics = {
        m["pods"]["metric"]["name"] for o in hpas.values() for m in o["spec"]["metrics"] if m["type"] == "Pods"
    }
    assert pod_metrics <= adapter_names, "an HPA asks for a custom metric no adapter rule serves"
    # The gauge the workers export is a gauge (an HPA on a counter scales up for ever).
    keda = next(o for _, o in ALL if o["kind"] == "ScaledObject")
    assert keda["spec"]["triggers"][0]["metadata"]["threshold"] == worker_metric[0]["pods"]["target"]["averageValue"]


@pytest.mark.parametrize("entry", d.ENTRY_POINTS, ids=lambda p: p.name)
def test_each_variant_has_one_autoscaler_per_deployment_that_scales(entry):
    objects = d.objects(entry)
    scalers = [o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in scalers]
    assert sorted(targets) == ["router", "worker"], "two autoscalers on one Deployment fight each other"
    names = {o["metadata"]["name"] for o in by_kind(objects, "Deployment")}
    assert names == {"registry", "router", "worker"}


def test_shunter_containers_probe_grpc_health_and_outlast_their_drain():
    parser = build_parser()
    checked = 0
    for obj, container in shunter_containers(o for _, o in ALL):
        spec = obj["spec"]["template"]["spec"]
        port = int(flag(container["args"], "--port"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (obj["metadata"]["name"], probe)
        grace_s = float(flag(container["args"], "--grace-s"))
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep_s = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        assert spec["terminationGracePeriodSeconds"] >= sleep_s + grace_s + 10, obj["metadata"]["name"]
        live = container["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > grace_s, "liveness would cut a drain short"
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (obj["metadata"]["name"], kind)
        # Kubernetes expands $(VAR) only for variables the container defines.
        env = {e["name"] for e in container.get("env", [])}
        refs = {m for a in container["args"] for m in re.findall(r"\$\((\w+)\)", a)}
        assert refs <= env, refs - env
        argv = [a.replace("$(POD_IP)", "10.0.0.1").replace("$(WORKER_PROCESSES)", "8") for a in container["args"]]
        assert parser.parse_args(argv).command == argv[0]
        checked += 1
    assert checked >= 4


def test_every_deployment_spreads_and_has_a_disruption_budget():
    objects = [o for _, o in ALL]
    budgets = by_kind(objects, "PodDisruptionBudget")
    for deployment in by_kind(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"], deployment["metadata"]["name"]
        assert any(
            b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets
        ), f"no PodDisruptionBudget selects {deployment['metadata']['name']}"


def test_services_select_pods_that_exist():
    objects = [o for _, o in ALL]
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    pod_labels = [o["spec"]["template"]["metadata"]["labels"] for o in workloads]
    for service in by_kind(objects, "Service"):
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pod_labels), service["metadata"]


def test_gpu_workers_ask_for_a_gpu_and_one_process_per_core():
    gpu = d.objects(d.K8S / "overlays" / "gpu")
    worker = next(o for o in gpu if o["kind"] == "Deployment" and o["metadata"]["name"] == "worker")
    spec = worker["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert flag(container["args"], "--processes") == "$(WORKER_PROCESSES)"
    source = next(e for e in container["env"] if e["name"] == "WORKER_PROCESSES")["valueFrom"]["resourceFieldRef"]
    assert source["resource"] == "limits.cpu"
    cores = int(container["resources"]["limits"]["cpu"])
    metrics_ports = [p["containerPort"] for p in container["ports"] if p["name"].startswith("metrics")]
    assert metrics_ports == list(range(9090, 9090 + cores)), "one metrics port per process for Prometheus"
    # Each process registers the address it bound: the pod IP, not 0.0.0.0.
    assert flag(container["args"], "--host") == "$(POD_IP)" and flag(container["args"], "--advertise") is None


def _ingress_from(policy):
    return [(rule.get("from"), rule.get("ports")) for rule in policy["spec"].get("ingress", [])]


def test_network_policies_let_only_routers_reach_workers_and_only_shunter_reach_redis_and_the_registry():
    policies = {o["metadata"]["name"]: o for _, o in ALL if o["kind"] == "NetworkPolicy"}
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    def sources(name):
        return [frm for frm, _ in _ingress_from(policies[name]) if frm != prometheus]

    assert sources("worker-ingress") == [[{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "router"}}}]]
    shunter_only = [[{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shunter"}}}]]
    assert sources("redis-ingress") == shunter_only
    assert sources("registry-ingress") == shunter_only
    # Every Shunter pod carries the label the Redis and registry policies admit.
    for _, obj in ALL:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            assert obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shunter"


def test_only_the_registry_holds_the_admin_key_and_each_service_its_own():
    mounted: dict[str, set[str]] = {}
    for _, obj in ALL:
        if obj["kind"] == "Deployment":
            spec = obj["spec"]["template"]["spec"]
            names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for c in spec["containers"] for e in c.get("env", [])
                      if "secretKeyRef" in e.get("valueFrom", {})}
            mounted.setdefault(obj["metadata"]["name"], set()).update(n for n in names if n.endswith("-key"))
    assert mounted == {"registry": {"shunter-admin-key"}, "router": {"shunter-router-key"},
                       "worker": {"shunter-worker-key"}}


def test_keys_and_certificates_come_from_secrets_and_none_is_committed():
    assert not [o for _, o in ALL if o["kind"] == "Secret"], "secrets are created by the operator, never committed"
    text = "\n".join(p.read_text() for p in d.K8S.rglob("*.yaml"))
    assert not re.search(r"shk_[0-9a-f]{12}_", text), "an API key in a manifest"
    refs = set()
    for _, obj in ALL:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            spec = obj["spec"]["template"]["spec"]
            refs |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
            for container in spec["containers"]:
                refs |= {
                    e["valueFrom"]["secretKeyRef"]["name"]
                    for e in container.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})
                }
                assert not any("redis://" in a or "shk_" in a for a in container.get("args", []))
        if obj["kind"] == "Ingress":
            refs |= {t["secretName"] for t in obj["spec"]["tls"]}
    assert refs == {"shunter-admin-key", "shunter-worker-key", "shunter-router-key", "shunter-redis",
                    "shunter-router-tls"}
    # The top-level kustomization says how to create each one it needs.
    howto = (d.K8S / "kustomization.yaml").read_text() + (d.K8S / "ingress" / "ingress.yaml").read_text()
    for name in refs:
        assert f"secret generic {name}" in howto or f"secret tls {name}" in howto, name
