"""TLS and service-key flags shared by `shunter router|worker|registry` and the admin commands.

Serving side (``add_serve_args``): ``--tls-cert``/``--tls-key`` and, for mutual TLS,
``--tls-client-ca``. Dialling side (``add_dial_args``): ``--tls-ca`` (trust these CAs
when dialling the registry and workers; turns TLS on), and for mutual TLS
``--tls-client-cert``/``--tls-client-key``. Files are read by services/common/tls.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # grpc is imported when a command runs, not when the CLI parses
    from services.common.tls import ClientTls, ServerTls


class FlagError(ValueError):
    """A bad combination of flags: the command prints it and exits 2."""


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM; reloaded when it changes)")
    parser.add_argument("--tls-key", type=Path, help="private key of --tls-cert (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)")


def add_dial_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--tls-ca", type=Path, default=_env_path("SHUNTER_TLS_CA"),
        help=f"dial {what} over TLS, trusting this CA (PEM; env SHUNTER_TLS_CA)",
    )
    parser.add_argument("--tls-client-cert", type=Path, default=_env_path("SHUNTER_TLS_CLIENT_CERT"),
                        help="certificate to present when dialling, for servers that require one (mTLS; "
                        "env SHUNTER_TLS_CLIENT_CERT)")
    parser.add_argument("--tls-client-key", type=Path, default=_env_path("SHUNTER_TLS_CLIENT_KEY"),
                        help="private key of --tls-client-cert (env SHUNTER_TLS_CLIENT_KEY)")
    parser.add_argument("--tls-server-name", default="",
                        help="check the servers' certificates against this name instead of the host dialled "
                        "(e.g. one certificate for every service, as deploy/k8s/overlays/tls does)")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


def server_tls(args: argparse.Namespace) -> ServerTls | None:
    from services.common.tls import ServerTls

    if bool(args.tls_cert) != bool(args.tls_key):
        raise FlagError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise FlagError("--tls-client-ca needs --tls-cert and --tls-key")
    return ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    from services.common.tls import ClientTls

    cert, key = getattr(args, "tls_client_cert", None), getattr(args, "tls_client_key", None)
    if bool(cert) != bool(key):
        raise FlagError("--tls-client-cert and --tls-client-key go together")
    ca = getattr(args, "tls_ca", None)
    if not ca and not cert:
        return None
    return ClientTls(ca_file=ca, cert_file=cert, key_file=key, server_name=getattr(args, "tls_server_name", ""))


def read_key(args: argparse.Namespace, service: str) -> str | None:
    """The service key from ``--key-file`` if given, else ``--admin-key`` (or its env var)."""
    path = getattr(args, "key_file", None) or getattr(args, "admin_key_file", None)
    if path:
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise FlagError(f"cannot read key file {path}: {exc.strerror}") from None
    return args.admin_key or None
