"""Run one Shunter service: gRPC server, health, reflection, metrics, graceful drain.

Every service (worker, router, registry) is a ``ServiceApp`` started by ``run_service``,
which binds the port (0 picks a free one), reports SERVING once the app is ready, prints
the readiness line of DESIGN §1 and, on SIGTERM, drains in the order STYLE §13 gives:
health NOT_SERVING → the app rejects new work → in-flight calls finish → close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common.errors import PermissionDenied, ShunterError, Unauthenticated
from services.common.metrics_http import start_metrics_server
from services.common.process_group import die_with_group
from services.common.ready_line import format_ready_line
from services.common.reflection_v1 import SERVICE_NAME as REFLECTION_V1
from services.common.reflection_v1 import enable_reflection_v1
from services.common.settings import check_bounds, setting
from services.common.tls import ServerTls, TlsFileError

logger = logging.getLogger(__name__)

#: Default cap on one message; an oversized request fails with RESOURCE_EXHAUSTED.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


#: The server side of TLS (services/common/tls.py); the name the CLIs and tests use.
TlsConfig = ServerTls


@dataclass(frozen=True)
class ServerSettings:
    """Where and how a service listens; every field but tls and reuse_port is a flag of each service."""

    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(0, "gRPC port; 0 picks a free one", minimum=0, maximum=65535)
    metrics_host: str | None = setting(None, "address the Prometheus /metrics port binds (default: --host)")
    metrics_port: int = setting(0, "Prometheus /metrics port; 0 picks one", minimum=0, maximum=65535)
    grace_s: float = setting(30.0, "time in-flight calls get to finish after SIGTERM", unit="s", minimum=0)
    max_message_bytes: int = setting(
        DEFAULT_MAX_MESSAGE_BYTES, "largest request accepted; bigger ones get RESOURCE_EXHAUSTED",
        unit="bytes", minimum=1,
    )
    tls: TlsConfig | None = None
    #: Share the port with sibling processes (SO_REUSEPORT; `shunter worker --processes`).
    #: Off by default so that a port already in use is an error, not a silent split.
    reuse_port: bool = False
    otlp_endpoint: str = setting(
        "", "export OpenTelemetry traces over OTLP/gRPC to this collector (HOST:PORT, or https://HOST:PORT); "
        "none: $OTEL_EXPORTER_OTLP_ENDPOINT if set, else tracing off (sampling: $OTEL_TRACES_SAMPLER[_ARG])",
        metavar="HOST:PORT",
    )

    def __post_init__(self) -> None:
        check_bounds(self)


class ServiceApp(Protocol):
    #: Short name used in the readiness line and metrics: worker, router, registry.
    name: str
    @property
    def service_names(self) -> tuple[str, ...]:
        """Full gRPC service names this app serves (for health and reflection)."""

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    # Optional: an app with a ``bound_address`` attribute gets HOST:PORT written there
    # before start(), for apps that advertise themselves (workers in cluster mode).

    async def start(self) -> None:
        """Get ready to serve (load models, connect to stores); runs after the port is bound."""

    async def drain(self) -> None:
        """Stop taking new work (new calls get UNAVAILABLE); in-flight work continues."""

    async def close(self) -> None:
        """Release everything once in-flight calls have finished."""


#: How often a client may ping a connection that carries no data. gRPC's default is 5
#: minutes, and the third earlier ping gets GOAWAY "too_many_pings", which fails the next
#: request: a router pinging (every 10 s) the ModelStreamInfer stream it keeps open to a
#: worker between requests was cut off after about 30 idle seconds.
MIN_CLIENT_PING_INTERVAL_MS = 5_000


def server_options(max_message_bytes: int, reuse_port: bool = False) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ]


class RunningService:
    """A started service: its bound ports and the means to stop it."""

    def __init__(self, app: ServiceApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self.server = grpc.aio.server(options=server_options(settings.max_message_bytes, settings.reuse_port))
        self.health = HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._stopping = asyncio.Event()
        self._metrics_httpd: WSGIServer | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        settings = self.settings
        self.app.add_to_server(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (*self.app.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflected = (*names, reflection.SERVICE_NAME, REFLECTION_V1)
        reflection.enable_server_reflection(reflected, self.server)
        enable_reflection_v1(reflected, self.server)
        bind = f"{settings.host}:{settings.port}"
        if settings.tls is not None:
            self.port = self.server.add_secure_port(bind, settings.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(bind)
        if self.port == 0:
            raise OSError(f"cannot bind {bind}")
        for name in ("", *self.app.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if hasattr(self.app, "bound_address"):
            self.app.bound_address = self.address
        await self.app.start()
        metrics_host = settings.metrics_host or settings.host
        self._metrics_httpd = start_metrics_server(settings.metrics_port, addr=metrics_host)
        self.metrics_port = self._metrics_httpd.server_address[1]
        for name in ("", *self.app.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        print(
            format_ready_line(self.app.name, self.address, f"{metrics_host}:{self.metrics_port}"),
            flush=True,
        )

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        logger.info("%s: draining", self.app.name)
        await self.health.enter_graceful_shutdown()
        await self.app.drain()
        await self.server.stop(self.settings.grace_s)
        await self.app.close()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
        logger.info("%s: stopped", self.app.name)


async def serve_until_signal(app: ServiceApp, settings: ServerSettings) -> None:
    """Start the service, then run until SIGTERM or SIGINT and drain."""
    service = RunningService(app, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    die_with_group()  # a child of `--processes N`: drain when the group's supervisor dies
    # Start-up may wait a long time (models loading, a registry not answering yet), so a
    # signal during it abandons the start and drains what was started.
    starting = asyncio.ensure_future(service.start())
    stopping = asyncio.ensure_future(service._stopping.wait())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        logger.info("%s: stopped while starting", app.name)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    else:
        stopping.cancel()
        starting.result()  # a start-up error propagates
    await service.wait_stopped()


def run(app: ServiceApp, settings: ServerSettings) -> int:
    """Blocking entry point for the CLI: uvloop when available, exit 0 after a clean drain."""
    configure_logging()
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        runner(serve_until_signal(app, settings))
    except (Unauthenticated, PermissionDenied) as exc:
        # A credential the cluster refuses at start-up is a configuration error, like a bad flag.
        print(f"shunter {app.name}: {exc}", file=sys.stderr)
        return 2
    except TlsFileError as exc:
        print(f"shunter {app.name}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ShunterError) as exc:
        print(f"shunter {app.name}: {exc}", file=sys.stderr)
        return 1
    return 0


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
