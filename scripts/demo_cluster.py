#!/usr/bin/env python3
"""The cluster demo: `shunter up` on the example models, then clients through the router.

Through the router with the data key: classify digits, embed sentences with MiniLM, set
a 90/10 canary with a sticky header and show how 1,000 users split (and that each user
stays put), then print grpcurl commands to try while the cluster runs. Needs the example
models (scripts/build_examples.py); scripts/demo runs this after the worker demo.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.registry_client import RegistryClient  # noqa: E402 - registry protos only

GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"


def start_cluster(run_dir: Path) -> tuple[subprocess.Popen, dict[str, str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(ROOT / "examples" / "models"),
         "--workers", "2", "--port", "0", "--run-dir", str(run_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    env: dict[str, str] = {}
    summary: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="")
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            env[name] = value
        else:
            summary.append(line)
        if line.startswith("# Ctrl-C"):
            return proc, env, summary
    raise SystemExit(f"shunter up exited with {proc.wait()}; logs in {run_dir}")


def router_revision(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    match = re.search(r"^shunter_router_routing_table_revision (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def set_canary(env: dict[str, str], metrics_url: str) -> None:
    async def go() -> int:
        async with RegistryClient(env["SHUNTER_REGISTRY"], env["SHUNTER_ADMIN_KEY"]) as client:
            await client.set_weights("digits", {"2": 90, "3": 10}, sticky_header="x-user-id")
            return client.last_revision

    revision = asyncio.run(go())
    deadline = time.monotonic() + 30
    while router_revision(metrics_url) < revision:  # the router picks it up from its watch stream
        if time.monotonic() > deadline:
            raise SystemExit("the router did not pick up the canary policy")
        time.sleep(0.05)


def main() -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="shunter-demo-"))
    print("starting a local cluster: shunter up --model-repository examples/models --workers 2 --port 0")
    proc, env, summary = start_cluster(run_dir)
    metrics_url = next(line.split()[-1] for line in summary if line.startswith("#   router"))
    router, key = env["SHUNTER_ROUTER"], env["SHUNTER_API_KEY"]
    auth = {"authorization": f"Bearer {key}"}
    try:
        with grpcclient.InferenceServerClient(router) as client:
            sample = np.load(ROOT / "examples" / "models" / "digits" / "sample.npz")
            images, labels = sample["images"][:8].astype(np.float32), sample["labels"][:8]
            inp = grpcclient.InferInput("input__0", list(images.shape), "FP32")
            inp.set_data_from_numpy(images)
            result = client.infer("digits", [inp], headers=auth)
            print(f"\ndigits through the router (served by version {result.get_response().model_version}): "
                  f"predicted {result.as_numpy('output__0').argmax(axis=1).tolist()} true {labels.tolist()}")

            sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue today."]
            text = grpcclient.InferInput("TEXT", [len(sentences), 1], "BYTES")
            text.set_data_from_numpy(np.array([[s.encode()] for s in sentences], dtype=object))
            emb = client.infer("minilm", [text], headers=auth).as_numpy("EMBEDDING")
            print(f"minilm through the router: {emb.shape[0]} embeddings of {emb.shape[1]} dims")
            for i in range(1, len(sentences)):
                print(f"  cos({sentences[0]!r}, {sentences[i]!r}) = {float(emb[0] @ emb[i]):.3f}")

            print("\ncanary: shunter traffic set digits 2=90 3=10 --sticky-header x-user-id")
            set_canary(env, metrics_url)
            one = images[:1]

            def served(user: str) -> str:
                tensor = grpcclient.InferInput("input__0", list(one.shape), "FP32")
                tensor.set_data_from_numpy(one)
                response = client.infer("digits", [tensor], headers={**auth, "x-user-id": user})
                return response.get_response().model_version

            users = [f"user-{i}" for i in range(1000)]
            with ThreadPoolExecutor(16) as pool:
                first = dict(zip(users, pool.map(served, users), strict=True))
                again = dict(zip(users[:200], pool.map(served, users[:200]), strict=True))
            split = Counter(first.values())
            print(f"1,000 sticky users: version 2 → {split['2']}, version 3 → {split['3']} (weights 90/10); "
                  f"{sum(first[u] == v for u, v in again.items())}/200 users asked again got the same version")

        print("\ntry it yourself (the cluster stops when this demo ends; run `shunter up` to keep one):")
        print(f"  export SHUNTER_API_KEY={key}")
        print(f"  {GRPCURL.relative_to(ROOT)} -plaintext {router} list")
        print(f"  {GRPCURL.relative_to(ROOT)} -plaintext -H \"authorization: Bearer $SHUNTER_API_KEY\" "
              f"-d '{{\"name\": \"digits\"}}' {router} inference.GRPCInferenceService/ModelMetadata")
        if GRPCURL.exists():
            listed = subprocess.run([str(GRPCURL), "-plaintext", router, "list"], capture_output=True, text=True)
            print("  $ grpcurl list →", " ".join(listed.stdout.split()) or listed.stderr.strip())
            meta = subprocess.run(
                [str(GRPCURL), "-plaintext", "-H", f"authorization: Bearer {key}", "-d", '{"name": "digits"}',
                 router, "inference.GRPCInferenceService/ModelMetadata"],
                capture_output=True, text=True,
            )
            print("  $ grpcurl ... ModelMetadata →", " ".join(meta.stdout.split())[:160] or meta.stderr.strip())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
