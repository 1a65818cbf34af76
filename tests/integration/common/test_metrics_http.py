"""The metrics port answers /metrics only: a health probe aimed at it by mistake fails."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from services.common.metrics_http import start_metrics_server


@pytest.fixture(scope="module")
def base_url():
    httpd = start_metrics_server(0, addr="127.0.0.1")
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_metrics_path_serves_prometheus_text(base_url):
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:
        assert response.status == 200
        assert b"# TYPE" in response.read()


@pytest.mark.parametrize("path", ["/", "/v2/health/ready", "/healthz", "/metricsx", "/metrics/extra"])
def test_any_other_path_is_404(base_url, path):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{base_url}{path}", timeout=5)
    assert info.value.code == 404
