"""Model metadata, config, readiness and the repository index, from the routing table.

These answer from the registry's copy of each version's signature, so they cost no call
to a worker. Statistics are the one exception: the router asks every worker serving the
model and sums their numbers (see ``merge_statistics``), so ``tritonclient``'s
``get_inference_statistics`` through the router shows the cluster's totals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from services.common import edge, model_description
from services.common.errors import NotFound
from services.gen.inference import grpc_service_pb2 as pb
from services.router.table import ModelEntry, RoutingSnapshot, VersionEntry


def find(snapshot: RoutingSnapshot, name: str, version: str) -> tuple[ModelEntry, VersionEntry]:
    """The model and version a request names (its default version when it names none); labels the call."""
    model = snapshot.models.get(name)
    if model is None:
        edge.label(edge.UNKNOWN_MODEL)
        raise NotFound(f"unknown model '{name}'")
    entry = model.versions.get(version or model.default_version)
    if entry is None:
        edge.label(name)
        raise NotFound(f"unknown version '{version}' of model '{name}'")
    edge.label(name, entry.version)
    return model, entry


def model_metadata(model: ModelEntry, entry: VersionEntry) -> pb.ModelMetadataResponse:
    return model_description.metadata_response(model.name, model.ordered, entry.proto.backend, entry.signature)


def model_config(model: ModelEntry, entry: VersionEntry) -> pb.ModelConfigResponse:
    batching = entry.proto.batching
    described = (
        model_description.Batching(
            tuple(batching.preferred_batch_sizes), batching.max_queue_delay_us, batching.max_queue_size
        )
        if batching.enabled
        else None
    )
    return model_description.config_response(model.name, entry.proto.backend, entry.signature, described)


def model_ready(model: ModelEntry, version: str, usable: Callable[[VersionEntry], bool]) -> bool:
    """A named version: it has a usable worker. No version: the split (or its fallback) can serve."""
    if version:
        entry = model.versions.get(version)
        return entry is not None and usable(entry)
    candidates = [v for v, _ in model.split.weighted] or [model.default_version]
    if model.policy.fallback_version:
        candidates.append(model.policy.fallback_version)
    return any(v in model.versions and usable(model.versions[v]) for v in candidates)


def repository_index(
    snapshot: RoutingSnapshot, visible: Callable[[str], bool], ready_only: bool
) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for name in sorted(snapshot.models):
        if not visible(name):
            continue
        model = snapshot.models[name]
        for version in model.ordered:
            ready = bool(model.versions[version].workers)
            if ready_only and not ready:
                continue
            response.models.add(
                name=name,
                version=version,
                state="READY" if ready else "UNAVAILABLE",
                reason="" if ready else "no ready worker",
            )
    return response


def _add_duration(target: pb.StatisticDuration, source: pb.StatisticDuration) -> None:
    target.count += source.count
    target.ns += source.ns


_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
              "cache_hit", "cache_miss")
_BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def merge_statistics(responses: Iterable[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    """Sum per-version statistics from several workers into one response."""
    merged: dict[tuple[str, str], pb.ModelStatistics] = {}
    batches: dict[tuple[str, str, int], pb.InferBatchStatistics] = {}
    for response in responses:
        for stats in response.model_stats:
            key = (stats.name, stats.version)
            total = merged.get(key)
            if total is None:
                total = merged[key] = pb.ModelStatistics(name=stats.name, version=stats.version)
            total.last_inference = max(total.last_inference, stats.last_inference)
            total.inference_count += stats.inference_count
            total.execution_count += stats.execution_count
            for field in _DURATIONS:
                _add_duration(getattr(total.inference_stats, field), getattr(stats.inference_stats, field))
            for batch in stats.batch_stats:
                bkey = (*key, batch.batch_size)
                into = batches.get(bkey)
                if into is None:
                    into = batches[bkey] = total.batch_stats.add(batch_size=batch.batch_size)
                for field in _BATCH_DURATIONS:
                    _add_duration(getattr(into, field), getattr(batch, field))
    out = pb.ModelStatisticsResponse()
    for key in sorted(merged):
        out.model_stats.append(merged[key])
    return out
