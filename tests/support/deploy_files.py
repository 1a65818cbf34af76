"""Reading deploy/: the kustomize tree, the Prometheus rules, the Grafana dashboard.

Shared by the unit tests (schemas, structure) and the integration tests (promtool, a
rendered kustomization, metric names on a live cluster). Plain file reading only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ADAPTER_CONFIG = DEPLOY / "prometheus" / "adapter-config.yaml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "shunter.json"

#: The Kubernetes versions the manifests are validated against: a named one (native gRPC
#: probes, policy/v1, autoscaling/v2 and NetworkPolicy endPort are GA well before it) and
#: the newest one the installed kubernetes-validate knows.
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
#: Kinds Kubernetes' schemas do not cover (checked against their documented fields instead).
CRD_KINDS = frozenset({"ScaledObject"})

#: The ways to deploy: kubectl apply -k on each of these directories.
ENTRY_POINTS = (K8S, *sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir()))


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def resource_files(directory: Path) -> list[Path]:
    """Every manifest file a kustomization pulls in, following directories recursively."""
    files: list[Path] = []
    for entry in kustomization(directory).get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            files.extend(resource_files(path))
        else:
            files.append(path)
    return files


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def objects(entry: Path) -> list[dict[str, Any]]:
    """The objects one entry point deploys (kustomize's namespace transform aside)."""
    return [doc for path in resource_files(entry) for doc in documents(path)]


def all_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    seen: set[Path] = set()
    for entry in ENTRY_POINTS:
        for path in resource_files(entry):
            if path not in seen:
                seen.add(path)
                for doc in documents(path):
                    yield path, doc


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed panels included."""
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if t.get("expr")]


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables as Prometheus would see them after interpolation."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$model", ".*")


def adapter_queries() -> list[str]:
    """The adapter's metricsQuery templates, filled in as the adapter fills them."""
    out = []
    for rule in yaml.safe_load(ADAPTER_CONFIG.read_text())["rules"]:
        series = rule["seriesQuery"].split("{", 1)[0]
        out.append(
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="shunter",pod=~"a|b"')
            .replace("<<.GroupBy>>", "pod")
        )
    return out


def keda_queries() -> list[str]:
    return [
        trigger["metadata"]["query"]
        for _, doc in all_objects()
        if doc["kind"] == "ScaledObject"
        for trigger in doc["spec"]["triggers"]
        if trigger["type"] == "prometheus"
    ]


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (raises ValueError if it does not parse)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
