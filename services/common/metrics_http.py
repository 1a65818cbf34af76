"""The Prometheus endpoint every service runs beside its gRPC port: ``/metrics`` only.

prometheus_client's own ``start_http_server`` answers every path with the metrics and
200, so a probe aimed at this port by mistake (KServe's ``/v2/health/ready``, say) always
passed. Here any other path is 404.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

METRICS_PATH = "/metrics"


def metrics_only_app(registry=REGISTRY):
    """A WSGI app serving the registry at /metrics and 404 for every other path."""
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO", "") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: metrics are at {METRICS_PATH}\n".encode()]
        return metrics(environ, start_response)

    return app


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve /metrics on ``addr:port`` (0: a free port) from a daemon thread; returns the server."""

    class Server(ThreadingWSGIServer):
        """ThreadingWSGIServer with the address family of ``addr`` (IPv4 or IPv6)."""

    Server.address_family, addr = _get_best_family(addr, port)
    httpd = make_server(addr, port, metrics_only_app(), Server, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
