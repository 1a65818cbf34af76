"""The artifact and key attacks of issue #11 (items 1, 3, 4, 5, 11) against a running cluster under load.

A registry confined to one artifact root, a worker trusting one repository inside it, and a
router; closed-loop load runs through the router the whole time. Then, as a hostile client
or registrant would:

- #1: a torch.export archive carrying a pickled opaque object (tests/support/crafted_artifacts.py)
  is registered; it must be refused and its pickle never run (a marker file);
- #3: 35-byte requests claiming 2^26 and 2^40 BYTES items, to the router and to the worker;
  INVALID_ARGUMENT, and neither process's peak memory grows by the 512 MB a claim used to cost;
- #4: the trusted root itself, and a file directly in it, registered as artifacts so the
  handler would come from the root's parent; refused, the parent's handler never runs;
- #5: /etc/passwd, another host, ``..`` and ``%2e%2e`` paths, a link to /dev/zero and a FIFO
  as artifact URIs; the registry refuses each;
- #11: inference on the worker without a key and with a client key, on the router with no
  key, a made-up key, a worker-role key and a revoked key; registry admin calls with client,
  worker and router keys; each refused with UNAUTHENTICATED or PERMISSION_DENIED.

Bars: every attack refused with the expected code or message; no marker file (nothing
executed); 0 failed calls in the load; every process still running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common import artifacts
from services.common.errors import ShunterError
from services.common.model_config import version_config_text
from services.common.registry_client import RegistryClient
from services.common.tensors import serialize_bytes_tensor
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.helpers import eventually
from tests.reliability import load, report
from tests.reliability.cluster import quick_repository, quick_request
from tests.reliability.faults import SECONDS, auth, codes_text, failed, rss, rss_rows, start_fault_cluster
from tests.support.crafted_artifacts import add_opaque_object, rewrite_archive
from tests.support.models import build_examples

SERVED = ("quick", "texts", "pickled", "rootdir", "rootfile")
TEXTS_CONFIG = """\
backend: python
max_batch_size: 4
inputs: [{name: TEXT, datatype: BYTES, shape: [-1]}]
outputs: [{name: COUNT, datatype: INT32, shape: [1]}]
"""
TEXTS_MODEL = """
import numpy as np


def infer(inputs):
    return {"COUNT": np.array([[len(row)] for row in inputs["TEXT"]], dtype=np.int32)}
"""
PYTHON_CONFIG = """\
backend: python
max_batch_size: 4
inputs: [{name: IN, datatype: FP32, shape: [4]}]
outputs: [{name: OUT, datatype: FP32, shape: [4]}]
handler: handler.py
"""
HANDLER = """
from pathlib import Path

Path({marker!r}).write_text("code ran")


def infer(inputs):
    return {{"OUT": inputs["IN"] * 2}}
"""
LOAD_TIMEOUT_S = 30


def repository(root: Path) -> Path:
    trusted = quick_repository(root / "trusted")
    (trusted / "texts" / "1").mkdir(parents=True)
    (trusted / "texts" / "config.yaml").write_text(TEXTS_CONFIG)
    (trusted / "texts" / "1" / "model.py").write_text(TEXTS_MODEL)
    return trusted


@pytest.fixture()
def cluster(tmp_path):
    root = tmp_path / "artifacts"
    trusted = repository(root)
    cluster = start_fault_cluster(tmp_path, trusted, registry_args=("--artifact-root", str(root)))
    try:
        cluster.start_worker(",".join(SERVED), "--artifact-root", str(root), "--load-timeout-s", str(LOAD_TIMEOUT_S))
        cluster.add_router()
        cluster.create_key("data")
        yield cluster, root
    finally:
        cluster.stop()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def claim(items: int, body: bytes) -> bytes:
    request = pb.ModelInferRequest(model_name="texts")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, items])
    request.raw_input_contents.append(body)
    return request.SerializeToString()


async def call_code(address: str, payload: bytes, metadata=None) -> tuple[str, str]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(load.MODEL_INFER, request_serializer=None, response_deserializer=None)
        try:
            await call(payload, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as err:
            return err.code().name, err.details() or ""
    return "OK", ""


def status_of(workers: list[rpb.Worker], model: str, version: str) -> rpb.VersionStatus | None:
    for worker in workers:
        for status in worker.versions:
            if (status.model, status.version) == (model, version):
                return status
    return None


class Attacks:
    """What each attack got, and whether that was the refusal it should be."""

    def __init__(self, root: Path) -> None:
        self.rows: list[tuple[str, str, bool]] = []
        self.root = str(root)

    def add(self, attack: str, got: str, refused: bool) -> None:
        """Keep one answer; the scenario's temporary root reads ROOT, answers are cut at 160 characters."""
        self.rows.append((attack.replace(self.root, "ROOT"), got.replace(self.root, "ROOT")[:160], refused))

    async def infer(self, attack: str, address: str, payload: bytes, metadata, expected: set[str]) -> None:
        code, details = await call_code(address, payload, metadata)
        self.add(attack, f"{code}: {details}", code in expected)

    async def registry(self, attack: str, call, expected: str, match: str = "") -> None:
        try:
            await call()
        except ShunterError as exc:
            self.add(attack, f"{exc.code.name}: {exc}", exc.code.name == expected and match in str(exc))
            return
        self.add(attack, "accepted", False)


async def background(target: str, payload: bytes, metadata, stop: asyncio.Event) -> load.Outcomes:
    """Closed-loop load in 1 s runs until ``stop``; every call kept."""
    total = load.Outcomes(started=time.monotonic())
    while not stop.is_set():
        run = await load.closed_loop(target, payload, 4, 1.0, metadata=metadata, timeout_s=10.0)
        for code, lat, done in zip(run.codes, run.latency_s, run.done_at, strict=True):
            total.add(code, lat, done)
    total.ended = time.monotonic()
    return total


async def register_dir(client: RegistryClient, model: str, model_dir: Path, version: str) -> None:
    config, _ = version_config_text(model_dir, version)
    artifact = model_dir / version
    await client.register_model_version(
        model, version, artifacts.uri_for(artifact), artifacts.sha256_of(artifact), config, rpb.PRODUCTION
    )


async def artifact_attacks(cluster, root: Path, attacks: Attacks) -> list[Path]:
    """#1, #4, #5; returns the marker files that must never appear."""
    trusted = cluster.repository
    markers = [root / "pickled.marker", root / "escape.marker"]
    model_dir = root / "pickled"
    shutil.copytree(build_examples() / "digits", model_dir)
    rewrite_archive(model_dir / "3" / "model.pt2", lambda files: add_opaque_object(files, markers[0]))
    (root / "handler.py").write_text(HANDLER.format(marker=str(markers[1])))
    (trusted / "model.py").write_text(HANDLER.format(marker=str(markers[1])))
    (root / "zero").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo")
    file_config = PYTHON_CONFIG.replace("handler: handler.py\n", "")
    async with RegistryClient(cluster.registry.address, cluster.admin_key) as client:
        await register_dir(client, "pickled", model_dir, "3")
        await client.register_model_version("rootdir", 1, artifacts.uri_for(trusted), artifacts.sha256_of(trusted),
                                            PYTHON_CONFIG, rpb.PRODUCTION)
        await client.register_model_version("rootfile", 1, artifacts.uri_for(trusted / "model.py"),
                                            artifacts.sha256_of(trusted / "model.py"), file_config, rpb.PRODUCTION)
        for uri, why in {
            "file:///etc/passwd": "outside the artifact roots",
            f"file://otherhost{root}/m/1": "names host 'otherhost'",
            f"file://{root}/%2e%2e/etc/passwd": "'..' segments",
            f"file://{root}/../etc/passwd": "'..' segments",
            (root / "zero").as_uri(): "outside the artifact roots",
            (root / "fifo").as_uri(): "not a regular file or directory",
        }.items():
            await attacks.registry(f"#5 register {uri}", lambda u=uri: client.register_model_version(
                "refused", 1, u, "0" * 64, PYTHON_CONFIG), "INVALID_ARGUMENT", why)
        for model, version, text, attack in (
            ("pickled", "3", "opaque", "#1 torch.export archive with a pickled opaque object"),
            ("rootdir", "1", "is not inside a trusted repository", "#4 the trusted root itself as the artifact"),
            ("rootfile", "1", "is not inside a trusted repository", "#4 a file directly in the trusted root"),
        ):
            try:
                workers = await eventually(
                    client.list_workers,
                    lambda ws, m=model, v=version: (s := status_of(ws, m, v)) is not None and bool(s.error),
                    timeout_s=180, what=f"{model} {version} refused",
                )
                status = status_of(workers, model, version)
                attacks.add(attack, f"worker: {status.error}", text in status.error and not status.ready)
            except (TimeoutError, AssertionError) as exc:
                attacks.add(attack, f"no refusal reported: {exc}", False)
    return markers


async def key_attacks(cluster, attacks: Attacks) -> None:
    """#11: every hop checks the key and its role."""
    router, worker = cluster.routers[0], cluster.workers[0]
    payload = quick_request()
    async with RegistryClient(cluster.registry.address, cluster.admin_key) as admin:
        made = {role: await admin.create_api_key(f"attack-{role}", role=role) for role in ("worker", "router")}
        revoked = await admin.create_api_key("attack-revoked")
        await admin.revoke_api_key(revoked.key.key_id)
    worker_key, router_key = made["worker"].secret, made["router"].secret
    data = cluster.keys["data"]
    await asyncio.sleep(1.0)  # the router's table catches up with the new and revoked keys
    denied = {"UNAUTHENTICATED", "PERMISSION_DENIED"}
    await attacks.infer("#11 worker inference with no key", worker.address, payload, None, {"UNAUTHENTICATED"})
    await attacks.infer("#11 worker inference with a client key", worker.address, payload, auth(data), denied)
    await attacks.infer("#11 router inference with no key", router.address, payload, None, {"UNAUTHENTICATED"})
    await attacks.infer("#11 router inference with a made-up key", router.address, payload,
                        auth("shk_000000000000_" + "x" * 43), {"UNAUTHENTICATED"})
    await attacks.infer("#11 router inference with a worker-role key", router.address, payload, auth(worker_key),
                        denied)
    await attacks.infer("#11 router inference with a revoked key", router.address, payload, auth(revoked.secret),
                        {"UNAUTHENTICATED"})
    for role, key in (("client", data), ("worker", worker_key), ("router", router_key)):
        async with RegistryClient(cluster.registry.address, key) as client:
            await attacks.registry(f"#11 registry CreateApiKey(admin) with a {role} key",
                                   lambda c=client: c.create_api_key("minted", admin=True), "PERMISSION_DENIED")


async def bytes_attacks(cluster, attacks: Attacks) -> dict[str, float]:
    """#3: returns the growth of each process's peak RSS (MiB) over the attacks."""
    router, worker = cluster.routers[0], cluster.workers[0]
    body = b"\x03\x00\x00\x00abc" * 5  # 35 bytes
    peaks = {"router": router.proc.pid, "worker": worker.proc.pid}
    before = {who: peak_rss_mib(pid) for who, pid in peaks.items()}
    for items in (2**26, 2**26, 2**40):
        await attacks.infer(f"#3 router: 35-byte body claiming {items} BYTES items", router.address,
                            claim(items, body), auth(cluster.keys["data"]), {"INVALID_ARGUMENT"})
        await attacks.infer(f"#3 worker: 35-byte body claiming {items} BYTES items", worker.address,
                            claim(items, body), auth(cluster.admin_key), {"INVALID_ARGUMENT"})
    good = claim(2, serialize_bytes_tensor(np.array([b"ab", b"cde"], dtype=object)))
    code, details = await call_code(router.address, good, auth(cluster.keys["data"]))
    attacks.add("#3 a well-formed BYTES request after the claims (must be served)", f"{code} {details}",
                code == "OK")
    return {who: peak_rss_mib(pid) - before[who] for who, pid in peaks.items()}


async def test_artifact_and_key_attacks_under_load(cluster):
    cluster, root = cluster
    router = cluster.routers[0]
    processes = {"router": router, "worker": cluster.workers[0], "registry": cluster.registry}
    pids = {who: p.proc.pid for who, p in processes.items()}
    before = rss(pids)
    stop = asyncio.Event()
    started = time.monotonic()
    loader = asyncio.ensure_future(background(router.address, quick_request(), auth(cluster.keys["data"]), stop))
    attacks = Attacks(root)
    try:
        markers = await artifact_attacks(cluster, root, attacks)
        grown = await bytes_attacks(cluster, attacks)
        await key_attacks(cluster, attacks)
        # Load for at least SECONDS, so the services are seen serving after the attacks too.
        await asyncio.sleep(max(0.0, started + SECONDS - time.monotonic()))
    finally:
        stop.set()
        run = await loader
    elapsed = time.monotonic() - started
    after = rss(pids)
    executed = [str(m) for m in markers if m.exists()]
    alive = {who: p.proc.poll() is None for who, p in processes.items()}
    bars = {
        f"every attack refused ({sum(r for *_, r in attacks.rows)} of {len(attacks.rows)})":
            all(r for *_, r in attacks.rows),
        "nothing executed (no marker file)": not executed,
        "peak RSS grew < 256 MiB in router and worker over the BYTES claims": all(g < 256 for g in grown.values()),
        "the services keep serving: 0 failed in the load, every process running": failed(run) == 0
        and all(alive.values()),
    }
    rows = [
        ("load", f"closed loop, 4 callers through the router for {elapsed:.0f} s (the attacks, then until "
                 f"{SECONDS:.0f} s), deadline 10 s"),
        ("failed / total by code", codes_text(run)),
        ("recovery time", "none needed" if failed(run) == 0 else "see the failed calls"),
        ("longest call during the attacks", f"{1000 * max(run.latency_s, default=0):.0f} ms"),
        ("peak RSS growth over the BYTES claims", ", ".join(f"{w} {g:.0f} MiB" for w, g in grown.items())),
        *rss_rows(before, after),
        ("processes running after", ", ".join(f"{w} {'yes' if a else 'NO'}" for w, a in alive.items())),
        ("marker files written", ", ".join(executed) or "none"),
        ("machine", load.load_average()),
        ("flags", "registry --artifact-root ROOT; worker --trusted-repository ROOT/trusted --artifact-root ROOT"),
    ]
    table = ["| attack | answer | refused |", "|---|---|---|"]
    table += [f"| {a} | {g.replace('|', '/')} | {'yes' if r else 'NO'} |" for a, g, r in attacks.rows]
    report.record("attacks", "Artifact and key attacks (#11 items 1, 3, 4, 5, 11) under load", rows, bars,
                  notes="\n".join(table))
    assert all(bars.values()), (bars, rows, attacks.rows)
