"""A small client of the ``shunter.monitor.v1.Monitor`` service (CLI and workers)."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.api_keys import auth_metadata
from services.common.registry_client import channel_options, to_shunter_error
from services.common.tls import ClientTls
from services.common.tls import channel as make_channel
from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
from services.gen.shunter.monitor.v1 import monitor_pb2_grpc as mpb_grpc


class MonitorClient:
    def __init__(
        self, address: str, key: str | None, *, timeout_s: float = 10.0, tls: ClientTls | None = None,
    ) -> None:
        # Several registry addresses (comma-separated): the monitor service is on each; use the first.
        self.address = address.split(",")[0].strip()
        self.timeout_s = timeout_s
        self._metadata = auth_metadata(key) if key else ()
        self._channel = make_channel(self.address, options=channel_options(), tls=tls)
        self._stub = mpb_grpc.MonitorStub(self._channel)

    async def __aenter__(self) -> MonitorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise to_shunter_error(exc, self.address) from None

    async def set_profile(self, profile: mpb.ReferenceProfile) -> mpb.ReferenceProfile:
        return await self._call("SetReferenceProfile", mpb.SetReferenceProfileRequest(profile=profile))

    async def get_profile(self, model: str, version: str) -> mpb.ReferenceProfile:
        return await self._call("GetReferenceProfile", mpb.GetReferenceProfileRequest(model=model, version=version))

    async def report(self, counts: mpb.DriftCounts) -> mpb.ReportDriftCountsResponse:
        return await self._call("ReportDriftCounts", counts)

    async def drift(self, model: str, version: str = "") -> list[mpb.VersionDrift]:
        return list((await self._call("GetDrift", mpb.GetDriftRequest(model=model, version=version))).versions)
