"""Async client of ``shunter.rollout.v1.Rollouts`` (served by the registry), for the CLI.

A ``RegistryClient`` with the rollout methods added: the same channel, admin key, error
mapping (ShunterError subclasses carrying the server's message) and ``last_revision``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from services.gen.shunter.rollout.v1 import rollout_pb2_grpc


class RolloutClient(RegistryClient):
    async def _rollout_call(self, method: str, request: Any, *, write: bool = False) -> Any:
        return await self._call(method, request, write=write, stub=rollout_pb2_grpc.RolloutsStub(self._channel()))

    async def start_rollout(
        self, model: str, version: str, *, baseline: str = "", steps: Sequence[int] = (), interval_s: float = 0.0,
        gates: opb.Gates | None = None,
    ) -> opb.Rollout:
        request = opb.StartRolloutRequest(model=model, version=str(version), baseline=str(baseline),
                                          steps=list(steps), interval_s=interval_s, gates=gates)
        return await self._rollout_call("StartRollout", request, write=True)

    async def get_rollout(self, model: str) -> opb.Rollout:
        return await self._rollout_call("GetRollout", opb.ModelRequest(model=model))

    async def pause_rollout(self, model: str) -> opb.Rollout:
        return await self._rollout_call("PauseRollout", opb.ModelRequest(model=model), write=True)

    async def resume_rollout(self, model: str) -> opb.Rollout:
        return await self._rollout_call("ResumeRollout", opb.ModelRequest(model=model), write=True)

    async def abort_rollout(self, model: str) -> opb.Rollout:
        return await self._rollout_call("AbortRollout", opb.ModelRequest(model=model), write=True)

    async def rollout_history(self, model: str) -> list[opb.Decision]:
        return list((await self._rollout_call("RolloutHistory", opb.ModelRequest(model=model))).decisions)

    async def switch_traffic(self, model: str, version: str) -> rpb.TrafficPolicy:
        request = opb.SwitchTrafficRequest(model=model, version=str(version))
        return await self._rollout_call("SwitchTraffic", request, write=True)

    async def rollback_traffic(self, model: str) -> rpb.TrafficPolicy:
        return await self._rollout_call("RollbackTraffic", opb.ModelRequest(model=model), write=True)

    async def traffic_history(self, model: str) -> list[opb.PolicyChange]:
        return list((await self._rollout_call("TrafficHistory", opb.ModelRequest(model=model))).changes)

    async def experiment_report(self, model: str, since_s: float = 0.0) -> opb.ExperimentReportResponse:
        return await self._rollout_call("ExperimentReport", opb.ExperimentReportRequest(model=model, since_s=since_s))

    async def shadow_report(self, model: str, since_s: float = 0.0) -> opb.ShadowReportResponse:
        return await self._rollout_call("ShadowReport", opb.ExperimentReportRequest(model=model, since_s=since_s))
