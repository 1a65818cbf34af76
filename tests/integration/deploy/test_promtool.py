"""deploy/prometheus/alerts.yaml passes Prometheus' own `promtool check rules`, and its unit
tests (`promtool test rules`) fire the alerts on the series they are meant for. Skips,
saying why, where promtool is absent (Debian's `prometheus` package ships it; scripts/
setup-env installs it where apt works); every expression is parsed another way in
tests/unit/deploy either way."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.support import deploy_files as d

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus, or scripts/setup-env)"
)


def test_alert_rules_pass_promtool_check_rules():
    result = subprocess.run([PROMTOOL, "check", "rules", str(d.ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(d.alert_rules())} rules found" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path):
    broken = yaml.safe_load(d.ALERTS.read_text())
    broken["groups"][0]["rules"][0]["expr"] = "sum(rate(shunter_requests_total[5m])"
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def _alert(rules: dict[str, dict], name: str, labels: dict[str, str], summary: str) -> dict:
    """One expected alert: its labels, the summary promtool renders, the rule's runbook."""
    return {
        "eval_time": "15m",
        "alertname": name,
        "exp_alerts": [{
            "exp_labels": {"severity": rules[name]["labels"]["severity"], **labels},
            "exp_annotations": {"summary": summary, "runbook": rules[name]["annotations"]["runbook"]},
        }],
    }


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def test_alerts_fire_on_the_series_they_watch(tmp_path):
    """promtool's rule unit tests: synthetic series in, the expected alerts out."""
    rules = {r["alert"]: r for r in d.alert_rules()}
    digits = {"namespace": "shunter", "model": "digits"}
    router = {"namespace": "shunter", "pod": "router-1", "service": "router", "method": "ModelInfer",
              "model": "digits", "version": "3"}
    tests = {
        "rule_files": [str(d.ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # 10 % of digits' calls fail UNAVAILABLE.
                    _series("shunter_requests_total", {**router, "code": "OK"}, "0+540x20"),
                    _series("shunter_requests_total", {**router, "code": "UNAVAILABLE"}, "0+60x20"),
                    # p99 in the 1 s bucket: over the 500 ms SLO.
                    _series("shunter_request_duration_seconds_bucket", {**router, "le": "0.5"}, "0x20"),
                    _series("shunter_request_duration_seconds_bucket", {**router, "le": "1"}, "0+600x20"),
                    _series("shunter_request_duration_seconds_bucket", {**router, "le": "+Inf"}, "0+600x20"),
                    # A worker held digits for 5 minutes, then its series ended.
                    _series("shunter_worker_rows_per_instance",
                            {"namespace": "shunter", "pod": "worker-1", "model": "digits", "version": "3"}, "4x5"),
                    _series("shunter_registry_redis_up", {"namespace": "shunter", "pod": "registry-1"}, "1 1 0x18"),
                    _series("shunter_router_registry_connected", {"namespace": "shunter", "pod": "router-1"},
                            "1 1 0x18"),
                    # Feature 7 drifts (PSI 0.4) from the start; feature 3 stays in the moderate band.
                    _series("shunter_drift_score", {"namespace": "shunter", "model": "digits", "version": "3",
                                                    "feature": "7", "method": "psi"}, "0.4x20"),
                    _series("shunter_drift_score", {"namespace": "shunter", "model": "digits", "version": "3",
                                                    "feature": "3", "method": "psi"}, "0.2x20"),
                    _series("shunter_output_nonfinite_total",
                            {"namespace": "shunter", "pod": "worker-1", "model": "digits", "version": "3"},
                            "0+5x20"),
                    _series("shunter_router_payload_log_records_total",
                            {"namespace": "shunter", "pod": "router-1", "outcome": "queue_full"}, "0+30x20"),
                    _series("shunter_router_payload_log_records_total",
                            {"namespace": "shunter", "pod": "router-1", "outcome": "written"}, "0+100x20"),
                ],
                "alert_rule_test": [
                    _alert(rules, "ShunterHighErrorRate", digits,
                           "digits: 10% of requests fail on the server side"),
                    _alert(rules, "ShunterLatencyP99OverSLO", digits,
                           "digits: p99 through the router is 995ms (SLO 500 ms)"),
                    _alert(rules, "ShunterModelNoReadyWorker", digits,
                           "digits has no ready worker: its requests fail with UNAVAILABLE or go to the fallback"),
                    _alert(rules, "ShunterRedisDown", {"namespace": "shunter"},
                           "Redis unreachable from Shunter in shunter"),
                    _alert(rules, "ShunterRegistryDisconnected", {"namespace": "shunter", "pod": "router-1"},
                           "router router-1 has lost the registry's watch stream"),
                    _alert(rules, "ShunterInputDrift",
                           {"namespace": "shunter", "model": "digits", "version": "3", "feature": "7"},
                           "digits v3: input feature 7 drifted (PSI 0.40)"),
                    _alert(rules, "ShunterNonFiniteOutputs",
                           {"namespace": "shunter", "model": "digits", "version": "3"},
                           "digits v3 returns NaN or infinite values"),
                    _alert(rules, "ShunterPayloadLogDropping", {"namespace": "shunter"},
                           "routers drop payload-log records (its Redis is slow or down)"),
                    # Before the worker went away, and before Redis went down: quiet.
                    {"eval_time": "4m", "alertname": "ShunterModelNoReadyWorker", "exp_alerts": []},
                    {"eval_time": "1m", "alertname": "ShunterRedisDown", "exp_alerts": []},
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
