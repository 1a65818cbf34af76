"""deploy/prometheus and deploy/grafana, read without a Prometheus: every expression parses
as PromQL (promql-parser, a port of Prometheus' own parser), rules and panels have what
Prometheus and Grafana need, and the rows kept for later work are there and marked.

`promtool check rules` and the live-cluster check of metric names are in
tests/integration/deploy (they run processes)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support import deploy_files as d

RULES = d.alert_rules()


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_alert_rules_parse_and_name_their_runbook(rule):
    assert d.metric_names(rule["expr"]), "an alert on no metric"
    assert rule["labels"]["severity"] in ("page", "ticket")
    assert rule["annotations"]["summary"]
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    anchor = rule["annotations"]["runbook"].split("#", 1)[1]
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in (d.ROOT / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("#")
    }
    assert anchor in headings, f"runbook anchor #{anchor} is not a heading of docs/operations.md"


def test_the_alerts_the_issue_names_exist():
    names = {r["alert"] for r in RULES}
    assert {
        "ShunterHighErrorRate", "ShunterLatencyP99OverSLO", "ShunterModelNoReadyWorker",
        "ShunterRedisDown", "ShunterRegistryDisconnected", "ShunterInputDrift", "ShunterNonFiniteOutputs",
        "ShunterPayloadLogDropping",
    } <= names
    assert len(names) == len(RULES)


def test_a_broken_expression_is_caught():
    with pytest.raises(ValueError):
        d.metric_names("sum(rate(shunter_requests_total[5m])")
    with pytest.raises(ValueError):
        d.metric_names("histogram_quantil(0.99, x)")


def test_every_dashboard_expression_parses():
    exprs = d.dashboard_exprs()
    assert len(exprs) >= 25
    for expr in exprs:
        assert d.metric_names(d.grafana_to_promql(expr)), expr


def test_dashboard_panels_are_laid_out_and_cover_what_operators_look_for():
    dash = d.dashboard()
    panels = list(d.dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    titles = " ".join(p["title"].lower() for p in panels if p["type"] == "row")
    for topic in ("traffic", "errors", "latency", "batching", "cache", "rate limits"):
        assert topic in titles, topic
    used = set().union(*(d.metric_names(d.grafana_to_promql(e)) for e in d.dashboard_exprs()))
    for name in ("shunter_worker_queue_depth", "shunter_worker_batch_size_rows_sum", "shunter_router_cache_total",
                 "shunter_router_rate_limited_total", "shunter_worker_queue_duration_seconds_bucket",
                 "shunter_worker_compute_duration_seconds_bucket", "shunter_worker_rows_per_instance"):
        assert name in used, name
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "model"} <= variables


def test_the_row_kept_for_rollouts_is_marked_to_be_filled():
    rows = {p["title"]: p for p in d.dashboard()["panels"] if p["type"] == "row"}
    row = next(r for title, r in rows.items() if title.startswith("Rollouts"))
    assert "to be filled" in row["title"].lower()
    assert row["collapsed"] and "To be filled" in row["panels"][0]["options"]["content"]


def _row_exprs(title: str) -> list[str]:
    """The expressions of the panels laid out under the (expanded) row ``title``."""
    panels = d.dashboard()["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == title)
    assert not panels[start]["collapsed"]
    exprs = []
    for panel in panels[start + 1:]:
        if panel["type"] == "row":
            break
        exprs += [d.grafana_to_promql(t["expr"]) for t in panel.get("targets", [])]
    return exprs


def test_model_output_drift_and_stage_panels_use_their_metrics():
    outputs = set().union(*map(d.metric_names, _row_exprs("Model outputs")))
    assert {"shunter_prediction_class_total", "shunter_prediction_confidence_bucket",
            "shunter_output_nonfinite_total"} <= outputs
    assert set().union(*map(d.metric_names, _row_exprs("Drift"))) == {"shunter_drift_score"}
    stages = set().union(*map(d.metric_names, _row_exprs("Latency per stage")))
    assert {"shunter_request_duration_seconds_sum", "shunter_worker_queue_duration_seconds_sum",
            "shunter_worker_compute_duration_seconds_sum", "shunter_router_payload_log_records_total"} <= stages


def test_scrape_config_loads_the_rules_and_labels_pods_as_the_adapter_expects():
    config = yaml.safe_load(d.SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [d.ALERTS.name]
    relabel = config["scrape_configs"][0]["relabel_configs"]
    targets = {r.get("target_label") for r in relabel}
    assert {"namespace", "pod"} <= targets
    for query in d.adapter_queries():
        assert "namespace" in query and "pod" in query
