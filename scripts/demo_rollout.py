#!/usr/bin/env python3
"""The rollout demo: one canary rolled back by itself, one promoted by itself.

`shunter up` on a small repository of python-handler versions of one model, ``shop``:
version 1 (the baseline), version 2 (fails about 20 % of requests), version 3 (as good as
1). Traffic flows through the router the whole time; the registry's controller judges each
2-second step from what the router reports, and `shunter rollout history` says why it
rolled version 2 back and promoted version 3. About a minute.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.gen.inference import grpc_service_pb2 as pb  # noqa: E402

CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: IN, datatype: FP32, shape: [4]}]
outputs: [{name: OUT, datatype: FP32, shape: [4]}]
"""
GOOD = "import numpy as np\n\n\ndef infer(inputs):\n    return {'OUT': (inputs['IN'] * 2).astype(np.float32)}\n"
#: Every fifth call fails, after the first few (the worker's warm-up must pass).
FLAKY = """
import itertools

import numpy as np

CALLS = itertools.count()


def infer(inputs):
    n = next(CALLS)
    if n > 5 and n % 5 == 0:
        raise RuntimeError("injected failure")
    return {"OUT": (inputs["IN"] * 2).astype(np.float32)}
"""


def write_repository(root: Path) -> Path:
    for version, code in (("1", GOOD), ("2", FLAKY), ("3", GOOD)):
        (root / "shop" / version).mkdir(parents=True)
        (root / "shop" / version / "model.py").write_text(code)
    (root / "shop" / "config.yaml").write_text(textwrap.dedent(CONFIG))
    return root


def shunter(env: dict[str, str], *args: str, show: bool = True) -> str:
    if show:
        print(f"$ shunter {' '.join(args)}")
    done = subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env})
    out = (done.stdout + done.stderr).rstrip()
    if show and out:
        print(textwrap.indent(out, "  "))
    return out


async def load(router: str, key: str, stop: asyncio.Event) -> Counter:
    """Requests through the router until stopped; -> codes."""
    codes: Counter = Counter()
    request = pb.ModelInferRequest(model_name="shop")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), "<f4").tobytes())
    raw = request.SerializeToString()
    async with grpc.aio.insecure_channel(router) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def caller() -> None:
            while not stop.is_set():
                try:
                    await infer(raw, metadata=[("authorization", f"Bearer {key}")], timeout=10)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1

        await asyncio.gather(*(caller() for _ in range(4)))
    return codes


def wait_finished(env: dict[str, str], timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = shunter(env, "rollout", "status", "shop", show=False)
        if "running" not in status.split("rollout:", 1)[-1].splitlines()[0]:
            return status
        time.sleep(0.5)
    raise SystemExit("the rollout did not finish in time")


def start_cluster(repository: Path, run_dir: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository), "--workers", "1",
         "--port", "0", "--run-dir", str(run_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    env: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            env[name] = value
        if line.startswith("# Ctrl-C"):
            return proc, env
    raise SystemExit(f"shunter up exited with {proc.wait()}; logs in {run_dir}")


async def demo(env: dict[str, str]) -> None:
    stop = asyncio.Event()
    traffic = None
    try:
        shunter(env, "traffic", "set", "shop", "1=100")
        traffic = asyncio.create_task(load(env["SHUNTER_ROUTER"], env["SHUNTER_API_KEY"], stop))
        await asyncio.sleep(1)
        for version in ("2", "3"):
            print()
            await asyncio.to_thread(shunter, env, "rollout", "start", "shop", "--to", version, "--steps", "20,50,100",
                                    "--interval", "2s", "--min-requests", "50")
            status = await asyncio.to_thread(wait_finished, env)
            print(textwrap.indent(status, "  "))
            await asyncio.to_thread(shunter, env, "rollout", "history", "shop")
        print()
        await asyncio.to_thread(shunter, env, "traffic", "history", "shop")
    finally:
        stop.set()
        if traffic is not None:
            codes = await traffic
            print(f"\nrequests through the router meanwhile: {dict(codes)} "
                  "(the INTERNAL ones are version 2's own failures while it was a canary)")


def main() -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="shunter-rollout-demo-"))
    repository = write_repository(run_dir / "models")
    print("starting a local cluster with model shop (1 good, 2 fails ~20 %, 3 good)")
    proc, env = start_cluster(repository, run_dir)
    try:
        asyncio.run(demo(env))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
