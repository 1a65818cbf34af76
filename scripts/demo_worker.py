#!/usr/bin/env python3
"""Start `shunter worker` on the example models and query it with tritonclient."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.processes import start_service

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    worker = start_service(["worker", "--model-repository", str(ROOT / "examples" / "models"), "--port", "0"])
    print(f"worker ready at {worker.address} (metrics {worker.metrics_url})")
    try:
        with grpcclient.InferenceServerClient(worker.address) as client:
            digits = load_digits()
            x = digits.data[:8].astype(np.float32)
            for version in ("1", "2"):
                inp = grpcclient.InferInput("input__0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                probs = client.infer("digits", [inp], model_version=version).as_numpy("output__0")
                print(
                    f"digits v{version}: predicted {probs.argmax(axis=1).tolist()} "
                    f"true {digits.target[:8].tolist()}"
                )
            sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue today."]
            text = grpcclient.InferInput("TEXT", [len(sentences), 1], "BYTES")
            text.set_data_from_numpy(np.array([[s.encode()] for s in sentences], dtype=object))
            emb = client.infer("minilm", [text]).as_numpy("EMBEDDING")
            print(f"minilm: {emb.shape[0]} embeddings of {emb.shape[1]} dims")
            for i in range(1, len(sentences)):
                print(f"  cos({sentences[0]!r}, {sentences[i]!r}) = {float(emb[0] @ emb[i]):.3f}")
            stats = client.get_inference_statistics("digits", "1").model_stats[0]
            print(f"digits v1 statistics: {stats.inference_count} inferences in {stats.execution_count} executions")
        print("this worker stops when the demo moves on; to try one yourself, run in another shell:")
        print("  .venv/bin/shunter worker --model-repository examples/models --port 8001")
        print("  .venv/bin/grpcurl -plaintext 127.0.0.1:8001 list")
    finally:
        worker.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
