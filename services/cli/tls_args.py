"""TLS flags shared by `shunter router|worker|registry` and the tools that dial them.

Serving side (``add_serve_args``): ``--tls-cert``/``--tls-key`` and, for mutual TLS,
``--tls-client-ca``. Dialling side (``add_dial_args``): ``--tls-ca`` (trust these CAs
when dialling the registry and workers; turns TLS on), and for mutual TLS
``--tls-client-cert``/``--tls-client-key``. Like every setting they are generated from a
dataclass (services/common/settings.py), so each is also ``SHUNTER_<SERVICE>_<NAME>``;
the dialling ones also read the shared ``SHUNTER_TLS_CA`` / ``SHUNTER_TLS_CLIENT_*``
that ``shunter up --tls`` exports. Files are read by services/common/tls.py.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.common import settings as settings_source
from services.common.settings import SettingsError, setting

if TYPE_CHECKING:  # grpc is imported when a command runs, not when the CLI parses
    from services.common.tls import ClientTls, ServerTls

#: The environment prefix of tools (keys, batch, stream, optimize): SHUNTER_CLIENT_TLS_CA…
CLIENT = "client"


class FlagError(SettingsError):
    """A bad combination of flags: the command prints it and exits 2."""


@dataclass(frozen=True)
class ServeTlsSettings:
    tls_cert: Path | None = setting(None, "serve TLS with this certificate (PEM; reloaded when it changes)")
    tls_key: Path | None = setting(None, "private key of --tls-cert (PEM)")
    tls_client_ca: Path | None = setting(None, "require client certificates signed by this CA (mTLS)")


@dataclass(frozen=True)
class DialTlsSettings:
    tls_ca: Path | None = setting(
        None, "dial over TLS, trusting this CA (PEM)", env_aliases=("SHUNTER_TLS_CA",)
    )
    tls_client_cert: Path | None = setting(
        None, "certificate to present when dialling, for servers that require one (mTLS)",
        env_aliases=("SHUNTER_TLS_CLIENT_CERT",),
    )
    tls_client_key: Path | None = setting(
        None, "private key of --tls-client-cert", env_aliases=("SHUNTER_TLS_CLIENT_KEY",)
    )
    tls_server_name: str = setting(
        "", "check the servers' certificates against this name instead of the host dialled "
        "(e.g. one certificate for every service, as deploy/k8s/overlays/tls does)",
    )


def add_serve_args(parser: argparse.ArgumentParser, service: str) -> None:
    settings_source.add_arguments(parser, ServeTlsSettings, service)
    parser.set_defaults(tls_service=service)


def add_dial_args(parser: argparse.ArgumentParser, what: str, service: str = CLIENT) -> None:
    settings_source.add_arguments(parser, DialTlsSettings, service, help_prefix=f"({what}) ")
    parser.set_defaults(tls_service=service)


def _service(args: argparse.Namespace) -> str:
    return getattr(args, "tls_service", CLIENT)


def server_tls(args: argparse.Namespace) -> ServerTls | None:
    from services.common.tls import ServerTls

    tls = settings_source.from_args(ServeTlsSettings, args, _service(args))
    if bool(tls.tls_cert) != bool(tls.tls_key):
        raise FlagError("--tls-cert and --tls-key go together")
    if tls.tls_client_ca and not tls.tls_cert:
        raise FlagError("--tls-client-ca needs --tls-cert and --tls-key")
    return ServerTls(tls.tls_cert, tls.tls_key, tls.tls_client_ca) if tls.tls_cert else None


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    from services.common.tls import ClientTls

    if not hasattr(args, "tls_ca"):
        return None
    tls = settings_source.from_args(DialTlsSettings, args, _service(args))
    if bool(tls.tls_client_cert) != bool(tls.tls_client_key):
        raise FlagError("--tls-client-cert and --tls-client-key go together")
    if not tls.tls_ca and not tls.tls_client_cert:
        return None
    return ClientTls(
        ca_file=tls.tls_ca, cert_file=tls.tls_client_cert, key_file=tls.tls_client_key,
        server_name=tls.tls_server_name,
    )

