"""Small real clusters for the scenarios: redis-server, a registry, workers (optionally behind
tests/support/delay_line.py, so the router reaches them through a delay) and a router."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from services.gen.inference import grpc_service_pb2 as pb
from tests.integration.router.cluster import Cluster, wait_for
from tests.support.models import SLOW_MODEL
from tests.support.processes import ROOT, ServiceProcess, free_port, start_redis, start_service

#: The paced model: a batch of up to PACED_BATCH rows takes PACED_S, so capacity is set by
#: the model (about PACED_BATCH / PACED_S rows/s), not by how busy the machine is.
PACED_S = 0.05
PACED_BATCH = 4


PACED_CONFIG = f"""
backend: python
max_batch_size: {PACED_BATCH}
inputs: [{{name: IN, datatype: FP32, shape: [4]}}]
outputs: [{{name: OUT, datatype: FP32, shape: [4]}}]
dynamic_batching: {{max_queue_delay_us: 20000, max_queue_size: 100000}}
"""


def paced_repository(root: Path) -> Path:
    """``paced`` version 1 (python backend, model.py in the version directory as a cluster needs)."""
    (root / "paced" / "1").mkdir(parents=True, exist_ok=True)
    (root / "paced" / "config.yaml").write_text(PACED_CONFIG)
    (root / "paced" / "1" / "model.py").write_text(SLOW_MODEL.format(delay_s=PACED_S))
    return root


QUICK_CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: IN, datatype: FP32, shape: [4]}]
outputs: [{name: OUT, datatype: FP32, shape: [4]}]
dynamic_batching: {max_queue_delay_us: 500, max_queue_size: 100000}
"""


def quick_repository(root: Path) -> Path:
    """``quick`` version 1: doubles its input at once (latency is the hops, not the model)."""
    (root / "quick" / "1").mkdir(parents=True, exist_ok=True)
    (root / "quick" / "config.yaml").write_text(QUICK_CONFIG)
    (root / "quick" / "1" / "model.py").write_text(SLOW_MODEL.format(delay_s=0.0))
    return root


def quick_request() -> bytes:
    request = pb.ModelInferRequest(model_name="quick")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return request.SerializeToString()


def paced_request() -> bytes:
    request = pb.ModelInferRequest(model_name="paced")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return request.SerializeToString()


def digits_request() -> bytes:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input__0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.random.default_rng(0).random(64, np.float32).tobytes())
    return request.SerializeToString()


def minilm_request() -> bytes:
    """One sentence for the example minilm model (BYTES: a 4-byte little-endian length, then the text)."""
    text = b"A worker at ten times its capacity refuses what it cannot serve in time."
    request = pb.ModelInferRequest(model_name="minilm")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(len(text).to_bytes(4, "little") + text)
    return request.SerializeToString()


@dataclass
class DelayLine:
    proc: subprocess.Popen
    port: int

    def delay(self, on: bool) -> None:
        import signal

        self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_delay_line(target_port: int) -> DelayLine:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "delay_line.py"), "127.0.0.1", str(port), str(target_port)],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return DelayLine(proc, port)


@dataclass
class Small(Cluster):
    delay_lines: list[DelayLine] = field(default_factory=list)

    def start_worker(self, models: str, *extra: str, behind_delay_line: bool = False) -> ServiceProcess:
        args = ["worker", "--registry", self.registry.address, "--serve", models, "--trusted-repository",
                str(self.repository), "--lease-ttl-s", "5", *extra]
        if behind_delay_line:
            port = free_port()
            line = start_delay_line(port)
            self.delay_lines.append(line)
            args += ["--port", str(port), "--advertise", f"127.0.0.1:{line.port}"]
            advertised = f"127.0.0.1:{line.port}"
        else:
            args += ["--port", "0"]
            advertised = None
        worker = start_service(args, env={"SHUNTER_ADMIN_KEY": self.admin_key})
        self.workers.append(worker)
        address = advertised or worker.address
        wait_for(lambda: address in self.ready_for(models.split(",")), 120, "worker ready in the registry")
        return worker

    def ready_for(self, models: list[str]) -> set[str]:
        """Workers the registry lists with every version of ``models`` ready (a repository such as
        examples/models holds more models than one worker is told to serve)."""
        wanted = {(m, v) for m, versions in scan(self.repository).items() if m in models for v in versions}
        workers, _ = self.admin(lambda c: c.list_workers())
        return {w.address for w in workers if wanted <= {(s.model, s.version) for s in w.versions if s.ready}}

    def stop(self) -> None:
        super().stop()
        for line in self.delay_lines:
            line.stop()


def start_small(tmp: Path, repository: Path) -> Small:
    redis = start_redis(appendonly=False)
    _, admin_key = api_keys.new_key()
    key_file = tmp / "admin.key"
    key_file.write_text(admin_key)
    registry = start_service(["registry", "--redis-url", redis.url, "--admin-key-file", str(key_file), "--port", "0"])
    cluster = Small(redis=redis, registry=registry, admin_key=admin_key, repository=repository)
    try:
        cluster.admin(lambda c: register_repository(c, repository, scan(repository)))
    except BaseException:
        cluster.stop()
        raise
    return cluster
