"""Which device a version runs on: ``device: auto`` resolved, CUDA asked for but absent refused.

Engines used to fall back to the CPU with a warning when a config asked for CUDA on a
machine without it, so a GPU deployment that lost its GPU served slowly and silently.
The choice is made once here, before any engine is created, so engines only ever see
``cpu`` or a CUDA device that exists.
"""

from __future__ import annotations

import functools

from services.worker.engines.base import EngineLoadError


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices this process can use (torch is a dependency; 0 without a driver)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str, what: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` to run ``what`` on; raises EngineLoadError naming the problem."""
    count = cuda_device_count()
    if device == "auto":
        return "cuda" if count else "cpu"
    if not device.startswith("cuda"):
        return device
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise EngineLoadError(
            f"{what}: device {device} requested but this worker has no CUDA GPU; "
            "use device: cpu, or device: auto for a GPU when there is one"
        )
    if index >= count:
        raise EngineLoadError(f"{what}: device {device} requested but this worker has {count} CUDA GPU(s)")
    return device
