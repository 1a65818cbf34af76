"""Drift end to end: a registry, two workers in cluster mode, the digits model.

The reference is the digits training split (stored with `models register --reference`).
Held-out rows, sent half to each worker, give no drifted feature; the same rows with
pixels 10 and 20 shifted and pixel 36 scaled give exactly those three, in the first
window that holds them. The window's row count is both workers' rows together, so the
score is the cluster's. Output metrics count every row on the worker that served it.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import numpy as np
import pytest
import yaml

from services.common.model_config import version_config_text
from services.common.registry_client import RegistryClient
from services.monitoring.client import MonitorClient
from tests.integration.monitoring.support import DigitsClient
from tests.integration.registry.helpers import eventually
from tests.support.processes import start_service

WINDOW_S = 2.0
ROWS_PER_REQUEST = 8
SHIFTED = {"input__0[10]", "input__0[20]", "input__0[36]"}


@pytest.fixture(scope="module")
def cluster(shunter, registry, admin, examples, digits_sets, tmp_path_factory):
    """digits v2 registered with a 3 s window and the training split as reference; two workers."""
    _, train = digits_sets
    text, _ = version_config_text(examples / "digits", "2")
    config = yaml.safe_load(text)
    config["monitoring"]["drift"] = {"window_s": WINDOW_S, "min_rows": 100}
    path = tmp_path_factory.mktemp("drift-config") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = shunter("models", "register", "digits", "--version", "2", "--artifact", str(examples / "digits" / "2"),
                  "--config", str(path), "--state", "production", "--reference", str(train)).stdout
    assert "reference profile for digits version 2: 64 features from 1437 rows" in out
    workers = [
        start_service(["worker", "--registry", registry.address, "--serve", "digits", "--admin-key", admin.key,
                       "--port", "0"])
        for _ in range(2)
    ]
    yield workers
    for worker in workers:
        worker.terminate()


async def _both_ready(registry, admin):
    async with RegistryClient(registry.address, admin.key) as client:
        await eventually(
            client.list_workers,
            lambda ws: sum(any(s.ready for s in w.versions if s.version == "2") for w in ws) == 2,
            timeout_s=120, what="two workers ready with digits v2",
        )


def _counting(workers) -> bool:
    """Both workers hold the reference profile (before that a worker counts no drift)."""
    for worker in workers:
        text = urllib.request.urlopen(worker.metrics_url, timeout=10).read().decode()
        if not any(line.startswith('shunter_monitor_profile{') and 'version="2"' in line for line in text.splitlines()):
            return False
    return True


async def _wait_for_window(registry, admin, window: int, rows: int):
    async with MonitorClient(registry.address, admin.key) as client:
        deadline = time.monotonic() + 60
        while True:
            (seen,) = await client.drift("digits", "2")
            if (seen.window == window and seen.rows == rows) or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.2)


def _send(workers, rows: np.ndarray, key: str) -> None:
    clients = [DigitsClient(w.address, key) for w in workers]
    try:
        for i, start in enumerate(range(0, len(rows), ROWS_PER_REQUEST)):
            clients[i % len(clients)].infer(rows[start:start + ROWS_PER_REQUEST])
    finally:
        for client in clients:
            client.close()


def _window_of(rows: np.ndarray, workers, shunter, registry, admin) -> dict:
    """Send ``rows`` inside one window; once the registry has scored it, `drift show --json`.

    Starts right after a window boundary; if sending still crossed into the next window
    (a very loaded machine), tries again in a later one: the check is on what was
    counted, never on how long it took.
    """
    for _attempt in range(5):
        while time.time() % WINDOW_S > 0.2 * WINDOW_S:
            time.sleep(0.02)
        started = time.time()
        _send(workers, rows, admin.key)
        window = int(started // WINDOW_S)
        if int(time.time() // WINDOW_S) != window:
            time.sleep(WINDOW_S)  # let that window pass; its partial counts are not used
            continue
        seen = asyncio.run(_wait_for_window(registry, admin, window, len(rows)))
        if seen.window == window and seen.rows == len(rows):
            shown = json.loads(shunter("drift", "show", "digits", "--version", "2", "--json").stdout)[0]
            assert int(shown["window"]) == window
            return shown
        logs = "\n".join(
            w.logs() + "\n" + "\n".join(
                line for line in urllib.request.urlopen(w.metrics_url, timeout=10).read().decode().splitlines()
                if line.startswith("shunter_monitor_")
            )
            for w in workers
        )
        raise AssertionError(
            f"window {window} never held all {len(rows)} rows: saw window {seen.window} with {seen.rows}\n{logs}"
        )
    raise AssertionError("could not send the rows inside one window in 5 tries")


def test_held_out_traffic_does_not_drift_and_shifted_features_do(cluster, registry, admin, digits_sets, shunter):
    asyncio.run(_both_ready(registry, admin))
    deadline = time.monotonic() + 60
    while not _counting(cluster):
        assert time.monotonic() < deadline, "the workers never fetched the reference profile"
        time.sleep(0.2)
    held_out = np.load(digits_sets[0])["input__0"].astype(np.float32)

    calm = _window_of(held_out, cluster, shunter, registry, admin)
    assert calm["scored"] and calm["method"] == "psi"
    assert len(calm["features"]) == 64
    assert [f["feature"] for f in calm["features"] if f["level"] == "drift"] == []
    assert calm["thresholds"]["psi"] == {"warn": 0.1, "drift": 0.25}

    shifted = held_out.copy()
    shifted[:, 10] += 8
    shifted[:, 20] += 8
    shifted[:, 36] *= 3
    drifted = _window_of(shifted, cluster, shunter, registry, admin)
    assert {f["feature"] for f in drifted["features"] if f["level"] == "drift"} == SHIFTED
    assert {f["feature"] for f in drifted["features"][:3]} == SHIFTED  # most drifted first

    table = shunter("drift", "show", "digits").stdout
    assert "3 of 64 features drifted by psi (warn/drift: js 0.1/0.2, ks 0.1/0.2, psi 0.1/0.25)" in table
    assert table.splitlines()[1].split() == ["FEATURE", "PSI", "JS", "KS", "LEVEL"]

    # The registry exports the cluster's score per feature (refreshed every few seconds).
    def psi_of(feature: str) -> float | None:
        text = urllib.request.urlopen(registry.metrics_url, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("shunter_drift_score{") and f'feature="{feature}"' in line and 'method="psi"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (psi_of("input__0[36]") or 0) > 0.25:
        time.sleep(0.5)
    assert psi_of("input__0[36]") > 0.25
    assert psi_of("input__0[0]") < 0.25

    # Output metrics: every row predicted once, on one of the two workers.
    def predicted() -> float:
        total = 0.0
        for worker in cluster:
            text = urllib.request.urlopen(worker.metrics_url, timeout=10).read().decode()
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("shunter_prediction_class_total{") and 'version="2"' in line)
        return total

    assert predicted() >= 2 * len(held_out)
