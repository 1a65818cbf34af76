"""NVIDIA Triton (through PyTriton) serving the report's models, for the peer comparison.

Runs inside the Triton peer's virtual environment (``nvidia-pytriton``, which bundles a
Triton Inference Server build that runs on CPU-only machines). Each model is bound with
Triton's dynamic batcher set as Shunter's config sets its own (``max_batch_size``,
``max_queue_delay_microseconds``, ``preferred_batch_size``) and ``--instances`` model
instances; each instance is one inference callable with its own ONNX Runtime session
(ort_model.py), and Triton runs them concurrently.

    python triton_server.py --spec models.json --instances 2 --grpc-port P --http-port H --metrics-port M

Prints ``peer triton listening on HOST:PORT`` once every model is loaded, then serves
until SIGTERM or SIGINT. The Python stub Triton starts for each model needs
LD_LIBRARY_PATH to hold the lib directory of the Python this venv was made from, or model
loading fails with an ``_thread.RLock`` error; servers.py (launch_triton) sets it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ort_model import OrtModel

NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.bytes_,
}


def tensors(specs: list[dict]) -> list[Tensor]:
    return [Tensor(name=t["name"], dtype=NUMPY_TYPES[t["datatype"]], shape=tuple(t["shape"])) for t in specs]


def make_callable(spec: dict):
    model = OrtModel(spec)

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return model.infer(inputs)

    return infer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="JSON written by servers.py (launch_triton)")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = TritonConfig(
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        http_address=args.host,
        http_port=args.http_port,
        metrics_address=args.host,
        metrics_port=args.metrics_port,
        log_verbose=0,
        exit_on_error=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Every endpoint open, ModelStatistics included (the batches Triton formed can be read by
    # hand); the server binds 127.0.0.1 only.
    security = TritonSecurityConfig(restricted_endpoints=[])
    with Triton(config=config, security_config=security) as triton:
        for spec in json.loads(args.spec.read_text())["models"]:
            batcher = DynamicBatcher(
                max_queue_delay_microseconds=spec["max_queue_delay_us"],
                preferred_batch_size=spec["preferred_batch_sizes"] or None,
            )
            triton.bind(
                model_name=spec["name"],
                infer_func=[make_callable(spec) for _ in range(args.instances)],
                inputs=tensors(spec["inputs"]),
                outputs=tensors(spec["outputs"]),
                config=ModelConfig(max_batch_size=spec["max_batch_size"], batcher=batcher),
                strict=False,
            )
        triton.run()
        print(f"peer triton listening on {args.host}:{args.grpc_port}", flush=True)
        while not stop.wait(1.0):
            if not triton.is_alive():
                print("triton server died", file=sys.stderr, flush=True)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
