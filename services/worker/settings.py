"""Worker settings: what `shunter worker` serves and, in cluster mode, how it joins the registry.

Each field is also a `shunter worker` flag and a ``SHUNTER_WORKER_<NAME>`` variable
(see services/common/settings.py). Cluster-only settings are ignored standalone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.admission import AdmissionSettings
from services.common.settings import SettingsError, check_bounds, setting


@dataclass(frozen=True)
class WorkerSettings:
    model_repository: Path | None = setting(
        None, "standalone: directory of <model>/config.yaml and <model>/<N>/", metavar="DIR"
    )
    models: tuple[str, ...] = setting((), "standalone: comma-separated subset of the repository's models to serve")
    strict: bool = setting(
        False, "standalone: stop if any version fails to load (off: serve the others, mark it UNAVAILABLE)"
    )
    registry: str | None = setting(None, "registry HOST:PORT: run in cluster mode", metavar="HOST:PORT")
    serve: tuple[str, ...] = setting((), "cluster mode: comma-separated model names to serve")
    admin_key: str = setting(
        "", "cluster mode: the worker's key for the registry, a worker-role key (`shunter keys create --role "
        "worker`; an admin key also works)", secret=True, file_flag="--key-file", env_aliases=("SHUNTER_ADMIN_KEY",),
    )
    open_inference: bool = setting(
        False, "cluster mode: serve inference to any caller, not only router and admin keys (logged loudly; "
        "standalone workers are always open)",
    )
    lease_ttl_s: int = setting(0, "cluster mode: lease TTL (0: the registry's default)", unit="s", minimum=0)
    advertise: str | None = setting(
        None, "cluster mode: HOST:PORT routers dial (default: the bound address)", metavar="HOST:PORT"
    )
    trusted_repository: tuple[Path, ...] = setting(
        (), "cluster mode: a directory whose python handlers may run (repeatable)", metavar="DIR"
    )
    artifact_root: tuple[Path, ...] = setting(
        (), "cluster mode: read artifacts only from inside DIR (repeatable; none: any local path)", metavar="DIR"
    )
    load_timeout_s: float = setting(
        900.0, "cluster mode: refuse a version that has not loaded and warmed up after this long", unit="s",
        minimum=0, exclusive_minimum=True,
    )

    engine_nice: int = setting(
        0, "added to the nice value of every engine instance thread: the event loop that receives requests "
        "runs first, and more of them wait in the batcher (larger batches); engines then also yield to "
        "every other process on the host (0: the loop's priority; README \"config.yaml\")", minimum=0,
        maximum=19,
    )

    # -- admission (README "Overload and failure handling") ---------------------------
    max_in_flight: int = setting(
        0, "admission: inference requests this process holds at once, counted from arrival; past it they "
        "are refused at once with UNAVAILABLE (0: no bound)", minimum=0,
    )
    max_in_flight_per_version: int = setting(
        0, "admission: inference requests one model version holds at once (0: no bound)", minimum=0
    )
    max_queue_wait_s: float = setting(
        0.0, "admission: refuse a request whose expected wait in its version's queue (rows ahead / batch "
        "size x observed batch time) is longer than this (0: only its own deadline bounds it)",
        unit="s", minimum=0,
    )
    deadline_admission: bool = setting(
        True, "admission: refuse at once a request whose deadline is shorter than its expected wait plus "
        "its own batch"
    )

    @property
    def admission(self) -> AdmissionSettings:
        return AdmissionSettings(
            max_in_flight=self.max_in_flight,
            max_in_flight_per_version=self.max_in_flight_per_version,
            max_queue_wait_s=self.max_queue_wait_s,
            deadline_aware=self.deadline_admission,
        )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.registry is None and self.model_repository is None:
            raise SettingsError("give --model-repository DIR, or --registry HOST:PORT with --serve NAMES")
        if self.registry is not None:
            if not self.serve:
                raise SettingsError("--registry needs --serve NAME[,NAME]")
            if not self.admin_key:
                raise SettingsError("--registry needs --key-file, --admin-key or $SHUNTER_ADMIN_KEY")
        elif self.open_inference:
            raise SettingsError("--open-inference is for cluster mode (a standalone worker is open already)")
